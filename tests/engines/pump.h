/* Shared by the engine tests: moves everything each side drains to the
 * other until both are quiet (at most 50 rounds). */
#ifndef M2MPSK_ENGINES_PUMP_H
#define M2MPSK_ENGINES_PUMP_H

#include <stdint.h>

#include "m2mpsk/m2mpsk.h"

static void pump(m2mpsk_assoc *a, m2mpsk_assoc *b) {
  uint8_t buf[16384];
  for (int round = 0; round < 50; round++) {
    int moved = 0;
    m2mpsk_assoc *sides[2][2] = {{a, b}, {b, a}};
    for (int s = 0; s < 2; s++) {
      size_t n;
      while (m2mpsk_assoc_drain(sides[s][0], buf, sizeof(buf), &n) ==
                 M2MPSK_OK &&
             n > 0) {
        moved = 1;
        int rc = m2mpsk_assoc_feed(sides[s][1], buf, n, 1000);
        (void)rc; /* the states say how it ended */
      }
    }
    if (!moved)
      return;
  }
}

#endif /* M2MPSK_ENGINES_PUMP_H */
