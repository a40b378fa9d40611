/* Tests that misbehave on purpose, for watchdog_test.py: never part of a
 * real run (ctest runs them only through that script, one at a time). */
#include <criterion/criterion.h>
#include <signal.h>
#include <sys/types.h>
#include <stdlib.h>
#include <unistd.h>

/* No limit of its own: support/timeout.c must give it one. */
Test(probe, hangs_without_a_limit_of_its_own) {
  for (;;)
    pause();
}

/* A limit longer than the watchdog's: the watchdog must name it. */
Test(probe, hangs_past_the_watchdog, .timeout = 120) {
  for (;;)
    pause();
}

/* Leaves a process behind, as a test that spawns a server and fails
 * before it reaps it would. */
Test(probe, leaves_a_process_behind) {
  pid_t pid = fork();
  cr_assert_neq(pid, -1);
  if (pid == 0) {
    setsid();
    for (;;)
      pause();
  }
}
