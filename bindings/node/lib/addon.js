'use strict';
// Loads the native addon (SWIG's V8 wrapper of bindings/m2mpsk.i): the one
// M2MPSK_NODE_ADDON names (the CMake build's tests set it), else the one
// node-gyp built for this package (npm install).
const path = require('node:path');

function load() {
  const explicit = process.env.M2MPSK_NODE_ADDON;
  if (explicit) return require(path.resolve(explicit));
  const candidates = [
    path.join(__dirname, '..', 'build', 'Release', 'm2mpsk.node'),
    path.join(__dirname, '..', 'build', 'Debug', 'm2mpsk.node'),
  ];
  let first;
  for (const c of candidates) {
    try {
      return require(c);
    } catch (e) {
      if (e.code !== 'MODULE_NOT_FOUND') throw e;
      first = first || e;
    }
  }
  const err = new Error('m2mpsk: the native addon is not built (npm install builds it with ' +
                        'node-gyp; a CMake build sets M2MPSK_NODE_ADDON)');
  err.cause = first;
  throw err;
}

module.exports = load();
