'use strict';
// npm install's build step: node-gyp rebuild against the headers of the
// node that runs this script, so that node-gyp downloads nothing, and
// against the libm2mpsk pkg-config finds.
//
// The headers: --nodedir is the prefix whose include/node/common.gypi
// belongs to this node (dirname(process.execPath)/../include/node for
// Debian's libnode-dev, nodesource and the nodejs.org tarballs), or
// npm_config_nodedir when the user set one. node-gyp: the one npm runs
// with (npm_config_node_gyp), else the one npm bundles or Debian's
// node-gyp package.
const fs = require('node:fs');
const path = require('node:path');
const { spawnSync } = require('node:child_process');

function fail(msg) {
  process.stderr.write(`m2mpsk: ${msg}\n`);
  process.exit(1);
}

function nodeDir() {
  if (process.env.npm_config_nodedir) return process.env.npm_config_nodedir;
  const prefix = path.resolve(path.dirname(fs.realpathSync(process.execPath)), '..');
  for (const dir of [prefix, '/usr', '/usr/local']) {
    const inc = path.join(dir, 'include', 'node');
    if (fs.existsSync(path.join(inc, 'node.h')) && fs.existsSync(path.join(inc, 'common.gypi'))) {
      return dir;
    }
  }
  return fail(`the headers of node ${process.version} were not found in ${prefix}/include/node ` +
              '(apt-get install libnode-dev, or set npm_config_nodedir)');
}

function nodeGyp() {
  const candidates = [];
  if (process.env.npm_config_node_gyp) candidates.push(process.env.npm_config_node_gyp);
  try {
    const npm = fs.realpathSync(spawnSync('sh', ['-c', 'command -v npm']).stdout.toString().trim());
    candidates.push(path.join(path.dirname(npm), '..', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'));
  } catch (e) {
    // no npm on PATH
  }
  candidates.push('/usr/share/nodejs/node-gyp/bin/node-gyp.js');
  for (const c of candidates) if (c && fs.existsSync(c)) return [process.execPath, c];
  const onPath = spawnSync('sh', ['-c', 'command -v node-gyp']).stdout.toString().trim();
  if (onPath) return [onPath];
  return fail('node-gyp not found (apt-get install node-gyp, or npm install -g node-gyp)');
}

const pc = spawnSync('pkg-config', ['--modversion', 'm2mpsk']);
if (pc.error) fail('pkg-config not found (apt-get install pkg-config)');
if (pc.status !== 0) {
  fail('libm2mpsk not found by pkg-config (apt-get install libm2mpsk-dev, or set ' +
       'PKG_CONFIG_PATH to the directory of its m2mpsk.pc)');
}
const want = require('../package.json').version;
const have = pc.stdout.toString().trim();
if (have !== want) {
  process.stderr.write(`m2mpsk: warning: libm2mpsk ${have} found, this package is ${want}\n`);
}
const dir = nodeDir();
const [cmd, ...pre] = nodeGyp();
const args = [...pre, 'rebuild', `--nodedir=${dir}`];
process.stdout.write(`m2mpsk: ${cmd} ${args.join(' ')} (libm2mpsk ${have})\n`);
const r = spawnSync(cmd, args, { stdio: 'inherit', cwd: path.join(__dirname, '..') });
if (r.error) fail(String(r.error));
process.exit(r.status === null ? 1 : r.status);
