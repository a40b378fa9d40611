# Builds the Node addon from SWIG's V8 wrapper of bindings/m2mpsk.i
# (src/m2mpsk_wrap.cxx, generated when the package is made) against the
# installed libm2mpsk, found by pkg-config (libm2mpsk-dev, or
# PKG_CONFIG_PATH for another prefix). scripts/install.js runs node-gyp
# with the running node's own headers, so nothing is downloaded.
{
  "targets": [
    {
      "target_name": "m2mpsk",
      "sources": ["src/m2mpsk_wrap.cxx"],
      "defines": ["BUILDING_NODE_EXTENSION"],
      "cflags_cc": [
        "<!@(pkg-config --cflags m2mpsk)",
        "-Wno-deprecated-declarations",
        "-Wno-unused-result"
      ],
      "libraries": ["<!@(pkg-config --libs m2mpsk)"],
      "ldflags": ["-Wl,-rpath,<!(pkg-config --variable=libdir m2mpsk)"]
    }
  ]
}
