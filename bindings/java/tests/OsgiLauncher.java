import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.File;
import java.io.IOException;
import java.lang.reflect.Method;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.Enumeration;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.ServiceLoader;
import java.util.TreeMap;
import java.util.TreeSet;
import java.util.jar.Attributes;
import java.util.jar.JarEntry;
import java.util.jar.JarFile;
import java.util.jar.JarOutputStream;
import java.util.jar.Manifest;
import java.util.stream.Stream;
import org.osgi.framework.Bundle;
import org.osgi.framework.BundleContext;
import org.osgi.framework.BundleException;
import org.osgi.framework.Version;
import org.osgi.framework.launch.Framework;
import org.osgi.framework.launch.FrameworkFactory;
import org.osgi.framework.wiring.BundleCapability;
import org.osgi.framework.wiring.BundleRequirement;
import org.osgi.framework.wiring.BundleWire;
import org.osgi.framework.wiring.BundleWiring;

/**
 * ctest java_osgi_bundle: starts an OSGi framework (Apache Felix, from
 * Debian) embedded in this JVM, installs the jar as a bundle and checks what
 * an OSGi application such as OM2M relies on:
 *
 * <ol>
 *   <li>the bundle's symbolic name and version;
 *   <li>it resolves and starts (its osgi.ee and Import-Package are met);
 *   <li>every package of the jar holding classes (but *.internal) is exported
 *       at the bundle's version, read from the framework's wiring and compared
 *       with the jar's own entries;
 *   <li>a class loaded through the bundle comes from the bundle's class
 *       loader, and this launcher's class path cannot see it;
 *   <li>a second bundle importing those packages with the 0.x range is wired
 *       to this one and sees the same classes; one asking for 1.x does not
 *       resolve;
 *   <li>with the native loader (org.m2mpsk.NativeLoader) in the jar, a native
 *       call from inside the framework returns the library's version.
 * </ol>
 *
 * Usage: OsgiLauncher JAR SYMBOLIC_NAME VERSION [REQUIRED_JAR...] (run with
 * only Felix and this class on the class path); the REQUIRED_JARs (the
 * bundles JAR imports from) are installed and started first. Exits 0 when all hold, 1 otherwise, 2 if
 * it takes more than 60 s.
 */
public final class OsgiLauncher {
  private static int failures = 0;

  private static void check(boolean ok, String what) {
    System.out.println((ok ? "ok   " : "FAIL ") + what);
    if (!ok) failures++;
  }

  public static void main(String[] args) throws Exception {
    if (args.length < 3) {
      System.err.println("usage: OsgiLauncher JAR SYMBOLIC_NAME VERSION [REQUIRED_JAR...]");
      System.exit(2);
    }
    Thread watchdog =
        new Thread(
            () -> {
              try {
                Thread.sleep(60_000);
              } catch (InterruptedException e) {
                return;
              }
              System.out.println("FAIL the OSGi test took more than 60 s");
              Runtime.getRuntime().halt(2);
            });
    watchdog.setDaemon(true);
    watchdog.start();

    File jar = new File(args[0]);
    String bsn = args[1];
    Version version = Version.parseVersion(args[2]);
    Map<String, List<String>> jarPackages = packagesOf(jar);
    System.out.println("jar packages: " + jarPackages.keySet());

    Path storage = Files.createTempDirectory("m2mpsk-osgi");
    Framework fw = null;
    try {
      fw = framework(storage);
      fw.start();
      System.out.println(
          "framework: " + fw.getSymbolicName() + " " + fw.getVersion() + " on Java "
              + Runtime.version().feature());
      List<File> required = new ArrayList<>();
      for (int i = 3; i < args.length; i++) required.add(new File(args[i]));
      run(fw.getBundleContext(), jar, bsn, version, jarPackages, required);
    } finally {
      if (fw != null) {
        fw.stop();
        fw.waitForStop(10_000);
      }
      try (Stream<Path> s = Files.walk(storage)) {
        s.sorted(Comparator.reverseOrder()).map(Path::toFile).forEach(File::delete);
      }
    }
    System.out.println(failures == 0 ? "all checks passed" : failures + " checks failed");
    System.exit(failures == 0 ? 0 : 1);
  }

  /**
   * The framework, told what this JVM offers: Felix 4.6 (Debian 12's)
   * predates Java 9 and lists neither the JDK's packages nor its osgi.ee for
   * it, which a current framework (Felix 7, Equinox) works out itself.
   */
  private static Framework framework(Path storage) {
    TreeSet<String> jdk = new TreeSet<>();
    for (Module m : ModuleLayer.boot().modules()) {
      for (String p : m.getDescriptor().exports().stream()
          .filter(e -> !e.isQualified()).map(e -> e.source()).toArray(String[]::new)) {
        if (!p.startsWith("java.")) jdk.add(p);
      }
    }
    StringBuilder ee = new StringBuilder("1.0,1.1,1.2,1.3,1.4,1.5,1.6,1.7,1.8");
    for (int v = 9; v <= Runtime.version().feature(); v++) ee.append(',').append(v);
    Map<String, String> config = new HashMap<>();
    config.put("org.osgi.framework.storage", storage.toString());
    config.put("org.osgi.framework.storage.clean", "onFirstInit");
    // Felix 4.6's URL handlers reach into java.net by reflection, which
    // Java 17 refuses; nothing here needs them.
    config.put("felix.service.urlhandlers", "false");
    config.put("org.osgi.framework.system.packages.extra", String.join(",", jdk));
    config.put("org.osgi.framework.system.capabilities.extra",
        "osgi.ee; osgi.ee=\"JavaSE\"; version:List<Version>=\"" + ee + "\"");
    FrameworkFactory factory = ServiceLoader.load(FrameworkFactory.class).iterator().next();
    return factory.newFramework(config);
  }

  private static void run(BundleContext ctx, File jar, String bsn, Version version,
      Map<String, List<String>> jarPackages, List<File> required) throws Exception {
    for (File r : required) {
      Bundle rb = ctx.installBundle(r.toURI().toString());
      rb.start();
      System.out.println("required: " + rb.getSymbolicName() + " " + rb.getVersion() + " started");
    }
    Bundle b = ctx.installBundle(jar.toURI().toString());
    check(bsn.equals(b.getSymbolicName()), "Bundle-SymbolicName " + b.getSymbolicName());
    check(version.equals(b.getVersion()), "Bundle-Version " + b.getVersion());
    try {
      b.start();
    } catch (BundleException e) {
      check(false, "start: " + e.getMessage());
      return;
    }
    check(b.getState() == Bundle.ACTIVE, "bundle ACTIVE (state " + b.getState() + ")");

    BundleWiring wiring = b.adapt(BundleWiring.class);
    Map<String, Version> exported = new TreeMap<>();
    for (BundleCapability c : wiring.getCapabilities("osgi.wiring.package")) {
      exported.put((String) c.getAttributes().get("osgi.wiring.package"),
          (Version) c.getAttributes().get("version"));
    }
    System.out.println("exported: " + exported);
    check(exported.keySet().equals(jarPackages.keySet()),
        "exports exactly the jar's packages " + jarPackages.keySet());
    for (Map.Entry<String, Version> e : exported.entrySet()) {
      check(version.equals(e.getValue()), "export " + e.getKey() + " at " + e.getValue());
    }
    for (BundleWire w : wiring.getRequiredWires("osgi.wiring.package")) {
      System.out.println("imports " + w.getCapability().getAttributes().get("osgi.wiring.package")
          + " from " + w.getProvider().getSymbolicName());
    }
    // The project's own packages are imported with the 0.x minor range.
    String lower = "(version>=" + version.getMajor() + "." + version.getMinor() + ".0)";
    String upper = "(!(version>=" + version.getMajor() + "." + (version.getMinor() + 1) + ".0))";
    for (BundleRequirement r : wiring.getRevision().getDeclaredRequirements("osgi.wiring.package")) {
      String filter = r.getDirectives().get("filter");
      System.out.println("Import-Package requirement " + filter);
      check(filter != null && filter.matches("\\((&\\()?osgi\\.wiring\\.package=[A-Za-z0-9_.]+\\).*"),
          "requirement names a package: " + filter);
      if (filter != null && filter.matches(".*osgi\\.wiring\\.package=(org\\.)?m2mpsk[.)].*")) {
        check(filter.contains(lower) && filter.contains(upper),
            "requirement has the range " + lower + upper + ": " + filter);
      }
    }

    Map<String, Class<?>> fromBundle = new HashMap<>();
    for (Map.Entry<String, List<String>> e : jarPackages.entrySet()) {
      String name = e.getValue().get(0);
      Class<?> c = b.loadClass(name);
      fromBundle.put(e.getKey(), c);
      check(c.getClassLoader() == wiring.getClassLoader(),
          "Bundle.loadClass(" + name + ") from the bundle's class loader");
      boolean visible;
      try {
        Class.forName(name);
        visible = true;
      } catch (ClassNotFoundException expected) {
        visible = false;
      }
      check(!visible, name + " is not on the launcher's class path");
    }

    String range = "[" + version.getMajor() + "." + version.getMinor() + ","
        + version.getMajor() + "." + (version.getMinor() + 1) + ")";
    Bundle consumer = ctx.installBundle("consumer-0.x",
        consumerBundle("org.m2mpsk.test.consumer", jarPackages.keySet(), range));
    try {
      consumer.start();
      check(true, "a bundle importing " + jarPackages.keySet() + " " + range + " starts");
      for (BundleWire w : consumer.adapt(BundleWiring.class).getRequiredWires("osgi.wiring.package")) {
        check(w.getProvider().getBundle().equals(b), "consumer's "
            + w.getCapability().getAttributes().get("osgi.wiring.package") + " wired to " + bsn);
      }
      for (Map.Entry<String, List<String>> e : jarPackages.entrySet()) {
        String name = e.getValue().get(0);
        check(consumer.loadClass(name) == fromBundle.get(e.getKey()),
            "consumer sees the bundle's " + name);
      }
    } catch (BundleException e) {
      check(false, "consumer bundle: " + e.getMessage());
    }

    String first = jarPackages.keySet().iterator().next();
    Bundle wrong = ctx.installBundle("consumer-1.x",
        consumerBundle("org.m2mpsk.test.wrong", List.of(first), "[1.0,2.0)"));
    try {
      wrong.start();
      check(false, "a bundle importing " + first + " [1.0,2.0) started");
    } catch (BundleException e) {
      check(true, "a bundle importing " + first + " [1.0,2.0) does not resolve: "
          + e.getMessage().lines().findFirst().orElse(""));
    }

    nativeCall(b, version);
  }

  /** The library's version through JNI, from inside the framework. */
  private static void nativeCall(Bundle b, Version version) throws Exception {
    try {
      b.loadClass("org.m2mpsk.NativeLoader");
    } catch (ClassNotFoundException e) {
      // Without it the library would have to be loaded by a class of the
      // bundle (JNI binds a library to one class loader): nothing a caller
      // outside the bundle can do.
      System.out.println("note no org.m2mpsk.NativeLoader in this jar: the native call is not checked");
      return;
    }
    Class<?> api;
    try {
      api = b.loadClass("org.m2mpsk.M2mpsk");
    } catch (ClassNotFoundException e) {
      api = b.loadClass("m2mpsk.M2mpsk");
    }
    Method m = api.getMethod("versionString");
    String v = (String) m.invoke(null);
    check(Version.parseVersion(v).equals(version), api.getName() + ".versionString() = " + v);
  }

  /** Each package holding classes (but *.internal), with its classes. */
  private static Map<String, List<String>> packagesOf(File jar) throws IOException {
    Map<String, List<String>> packages = new TreeMap<>();
    try (JarFile jf = new JarFile(jar)) {
      for (Enumeration<JarEntry> en = jf.entries(); en.hasMoreElements(); ) {
        String n = en.nextElement().getName();
        int slash = n.lastIndexOf('/');
        if (!n.endsWith(".class") || slash < 0 || n.contains("$")) continue;
        String pkg = n.substring(0, slash).replace('/', '.');
        if (pkg.startsWith("META-INF") || pkg.matches("(.*\\.)?internal(\\..*)?")) continue;
        packages.computeIfAbsent(pkg, k -> new ArrayList<>())
            .add(n.substring(0, n.length() - 6).replace('/', '.'));
      }
    }
    return packages;
  }

  /** A bundle of nothing but a manifest importing packages. */
  private static ByteArrayInputStream consumerBundle(String bsn, Iterable<String> packages,
      String range) throws IOException {
    Manifest mf = new Manifest();
    Attributes a = mf.getMainAttributes();
    a.put(Attributes.Name.MANIFEST_VERSION, "1.0");
    a.putValue("Bundle-ManifestVersion", "2");
    a.putValue("Bundle-SymbolicName", bsn);
    a.putValue("Bundle-Version", "1.0.0");
    List<String> imports = new ArrayList<>();
    for (String p : packages) imports.add(p + ";version=\"" + range + "\"");
    a.putValue("Import-Package", String.join(",", imports));
    ByteArrayOutputStream out = new ByteArrayOutputStream();
    try (JarOutputStream jos = new JarOutputStream(out, mf)) {
      jos.flush();
    }
    return new ByteArrayInputStream(out.toByteArray());
  }
}
