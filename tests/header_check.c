/* Compiled, never run, as C99 and as C++: proves include/m2mpsk/m2mpsk.h is
 * self-contained (nothing may be included before it) and C++-clean. */
#include "m2mpsk/m2mpsk.h"

int m2mpsk_header_check_anchor(void);
int m2mpsk_header_check_anchor(void) {
  m2mpsk_assoc *a = 0;
  return (int)m2mpsk_assoc_state(a) + M2MPSK_OK + M2MPSK_KEY_MAX;
}
