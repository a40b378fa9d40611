/* ASan replaces mlock() with a no-op that succeeds, so what a test checks
 * about locking cannot be observed under it: MLOCK_IS_FAKE is 1 there. */
#ifndef M2MPSK_TEST_MLOCK_FAKE_H
#define M2MPSK_TEST_MLOCK_FAKE_H

#if defined(__SANITIZE_ADDRESS__)
#define MLOCK_IS_FAKE 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define MLOCK_IS_FAKE 1
#endif
#endif
#ifndef MLOCK_IS_FAKE
#define MLOCK_IS_FAKE 0
#endif

#endif /* M2MPSK_TEST_MLOCK_FAKE_H */
