// Preloaded into Node servers that have no host option (`node -r ./scripts/force-loopback.cjs ...`):
// every TCP listen() binds 127.0.0.1 instead of all interfaces. Unix sockets are left alone.
// Handles listen(port), listen(port, cb), listen(port, host[, ...]), listen({port, ...}),
// listen(cb) and listen().
'use strict';
const net = require('node:net');
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  const a0 = args[0];
  if (a0 !== null && typeof a0 === 'object') {
    if (a0.path === undefined) args[0] = { ...a0, host: '127.0.0.1' };
  } else if (typeof a0 === 'number' || (typeof a0 === 'string' && /^\d+$/.test(a0))) {
    if (typeof args[1] === 'string') args[1] = '127.0.0.1'; else args.splice(1, 0, '127.0.0.1');
  } else if (a0 === undefined || typeof a0 === 'function') {
    args.unshift(0, '127.0.0.1');
  }
  return listen.apply(this, args);
};
