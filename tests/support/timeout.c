/* Every criterion test gets a time limit, so that a hang fails in seconds
 * and is named ("[FAIL] suite::test: Timed out.").
 *
 * Criterion 2.4 enforces a limit only where a test or its suite declares
 * `.timeout`; its `--timeout` option merely shortens such limits, and a
 * test with none runs for ever (measured: `Test(t, none) { sleep(3); }`
 * passes under `--timeout=1`). A hang there used to show as ctest's 600 s
 * timeout with nothing printed. This hook, run by the runner before it
 * starts any test, gives each test without a limit of its own (or of its
 * suite) M2MPSK_TEST_TIMEOUT seconds (default 30), and multiplies every
 * limit by M2MPSK_TEST_TIMEOUT_SCALE (default 1; the sanitizer builds run
 * several times slower and set it). Linked into every test executable.
 * (A suite's own `.timeout`, which no suite here has, would still apply
 * unscaled: criterion reads it apart from the tests'.) */
#include <criterion/criterion.h>
#include <criterion/hooks.h>
#include <stdlib.h>

static double env_seconds(const char *name, double dflt) {
  const char *s = getenv(name);
  if (s == NULL || *s == '\0')
    return dflt;
  char *end = NULL;
  double v = strtod(s, &end);
  return (end != s && *end == '\0' && v > 0) ? v : dflt;
}

ReportHook(PRE_ALL)(struct criterion_test_set *set) {
  double dflt = env_seconds("M2MPSK_TEST_TIMEOUT", 30);
  double scale = env_seconds("M2MPSK_TEST_TIMEOUT_SCALE", 1);
  struct criterion_suite_set *ss;
  FOREACH_SET(ss, set->suites) {
    double suite_limit = ss->suite.data ? ss->suite.data->timeout : 0;
    struct criterion_test *t;
    FOREACH_SET(t, ss->tests) {
      if (t->data->timeout <= 0)
        t->data->timeout = suite_limit > 0 ? suite_limit : dflt;
      t->data->timeout *= scale;
    }
  }
}
