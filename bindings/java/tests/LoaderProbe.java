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
 * library installed on this machine.
 */
public class LoaderProbe {
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
