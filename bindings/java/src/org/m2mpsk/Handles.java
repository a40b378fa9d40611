package org.m2mpsk;

import java.lang.ref.Cleaner;
import java.util.concurrent.atomic.AtomicLong;

/**
 * The one {@link Cleaner} that frees the native handles of the proxies the
 * application dropped without {@code close()}, in place of SWIG's
 * {@code finalize()}, and a count of the handles it still has to free.
 * Each proxy registers a {@link Free} action that holds the handle's
 * address and the function freeing it, never the proxy, so the proxy can
 * become unreachable; its {@code delete()} runs the action at once and
 * unregisters it.
 */
final class Handles {
  private static final Cleaner CLEANER = Cleaner.create();
  private static final AtomicLong LIVE = new AtomicLong();

  private Handles() {}

  /** Frees one native handle, once. */
  interface Deleter {
    void delete(long ptr);
  }

  /** The action a proxy registers: frees its handle unless disarmed. */
  static final class Free implements Runnable {
    private final Deleter deleter;
    private volatile long ptr;

    Free(Deleter deleter, long ptr) {
      this.deleter = deleter;
      this.ptr = ptr;
    }

    /** Keeps the handle: its ownership went elsewhere (swigRelease). */
    void disarm() {
      ptr = 0;
      LIVE.decrementAndGet();
    }

    @Override
    public void run() {
      long p = ptr;
      ptr = 0;
      if (p != 0) {
        deleter.delete(p);
        LIVE.decrementAndGet();
      }
    }
  }

  /** Registers proxy, whose handle ptr deleter frees when proxy is unreachable. */
  static Cleaner.Cleanable register(Object proxy, Free free) {
    LIVE.incrementAndGet();
    return CLEANER.register(proxy, free);
  }

  /** Handles registered and not yet freed (nor released), for the tests. */
  static long live() {
    return LIVE.get();
  }
}
