package org.m2mpsk;

/**
 * The loader's ctests (java_loader_*), run without System.loadLibrary.
 *
 * <pre>
 * LoaderProbe ok SOURCE        uses the library without loading it first;
 *                              it must have come from SOURCE
 * LoaderProbe fail TEXT...     M2mpsk.load() must fail, twice, with a
 *                              message containing every TEXT
 * </pre>
 *
 * In the package org.m2mpsk to read NativeLoader.source(). Exit status 0
 * on success, 1 on failure, 77 (skipped) when a "fail" probe found the
 * library installed on this machine (this build's, loaded, or another
 * build's, refused).
 */
public class LoaderProbe {
  /** Whether msg refuses a library of the install or Debian directory. */
  static boolean isInstalled(String msg) {
    boolean refused = msg.contains(" is not the JNI library of this")
        || msg.contains(" is libm2mpskjni.so ");
    return refused && (msg.contains(NativeLoader.INSTALL_DIR + "/")
        || (!NativeLoader.DEBIAN_DIR.isEmpty() && msg.contains(NativeLoader.DEBIAN_DIR + "/")));
  }

  public static void main(String[] args) throws Exception {
    if (args[0].equals("ok")) {
      try (Keystore ks = new Keystore()) { // the first use loads it
        System.out.println("loaded from " + NativeLoader.source() + ": " + M2mpsk.versionString());
      }
      M2mpsk.load(); // again: nothing happens
      if (!NativeLoader.source().equals(args[1])) {
        System.out.println("FAIL: expected it from " + args[1]);
        System.exit(1);
      }
      return;
    }
    for (int round = 0; round < 2; round++) {
      try {
        M2mpsk.load();
        String from = NativeLoader.source();
        System.out.println("loaded from " + from);
        boolean installed = from.startsWith(NativeLoader.INSTALL_DIR + "/")
            || (!NativeLoader.DEBIAN_DIR.isEmpty() && from.startsWith(NativeLoader.DEBIAN_DIR + "/"));
        System.exit(installed ? 77 : 1);
      } catch (UnsatisfiedLinkError e) {
        System.out.println(e.getMessage());
        if (System.getProperty(NativeLoader.PROPERTY) == null && isInstalled(e.getMessage())) {
          System.out.println("SKIP: another build's library is installed on this machine");
          System.exit(77);
        }
        for (int i = 1; i < args.length; i++) {
          if (!e.getMessage().contains(args[i])) {
            System.out.println("FAIL: the message does not say: " + args[i]);
            System.exit(1);
          }
        }
      }
    }
    // The classes that need the library fail as well, with the same error.
    try {
      new Config();
      System.out.println("FAIL: a Config was made without the library");
      System.exit(1);
    } catch (UnsatisfiedLinkError e) {
      System.out.println("new Config(): " + e);
    }
  }
}
