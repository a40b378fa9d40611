/* Compiled, never run: proves include/m2mpsk/m2mpsk.h is self-contained
 * C99 (nothing may be included before it). */
#include "m2mpsk/m2mpsk.h"

int m2mpsk_header_check_anchor(void);
int m2mpsk_header_check_anchor(void) { return M2MPSK_OK; }
