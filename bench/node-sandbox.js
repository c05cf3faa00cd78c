// Serves a checkout of github:cds-hooks/sandbox-cds-services on 127.0.0.1 for the benchmark.
// Its app parses JSON bodies up to body-parser's default 100 kB, less than the benchmark's
// 300-record request; an outer app parses them first with a larger limit (body-parser then skips
// the inner parse), so the service runs unchanged and each body is parsed once.
//   node bench/node-sandbox.js <checkout> <port>
const path = require('path');

const [checkout, port] = process.argv.slice(2);
const from = (m) => require(path.join(path.resolve(checkout), 'node_modules', m));
const express = from('express');
const bodyParser = from('body-parser');
const app = require(path.join(path.resolve(checkout), 'index.js'));

const outer = express();
outer.use(bodyParser.json({ limit: '10mb' }));
outer.use(app);
outer.listen(Number(port), '127.0.0.1', () => console.log(`LISTENING ${port}`));
