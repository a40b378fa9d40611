'use strict';
// npm pack's first step when run in bindings/node of a checkout: SWIG
// writes the wrapper the package compiles (src/m2mpsk_wrap.cxx) from the
// shared interface ../m2mpsk.i, with the headers of the libm2mpsk that
// pkg-config finds (m2mpsk/version.h is generated, so the checkout's
// include/ alone is not enough). The package CMake stages in
// build/bindings/node/package already has the wrapper: nothing to do.
const fs = require('node:fs');
const path = require('node:path');
const { spawnSync } = require('node:child_process');

const root = path.join(__dirname, '..');
const out = path.join(root, 'src', 'm2mpsk_wrap.cxx');
const iface = path.join(root, '..', 'm2mpsk.i');
if (!fs.existsSync(iface)) {
  if (fs.existsSync(out)) process.exit(0);
  process.stderr.write('m2mpsk: no src/m2mpsk_wrap.cxx and no ../m2mpsk.i to generate it from\n');
  process.exit(1);
}
const pc = spawnSync('pkg-config', ['--cflags-only-I', 'm2mpsk']);
if (pc.error || pc.status !== 0) {
  process.stderr.write('m2mpsk: pkg-config m2mpsk failed (install libm2mpsk-dev, or set PKG_CONFIG_PATH)\n');
  process.exit(1);
}
const includes = pc.stdout.toString().trim().split(/\s+/).filter(Boolean);
fs.mkdirSync(path.dirname(out), { recursive: true });
const args = ['-javascript', '-node', '-c++', `-I${path.join(root, '..')}`, ...includes, '-o', out, iface];
const r = spawnSync('swig', args, { stdio: 'inherit' });
if (r.error) {
  process.stderr.write(`m2mpsk: swig: ${r.error.message} (apt-get install swig)\n`);
  process.exit(1);
}
process.exit(r.status === null ? 1 : r.status);
