// The same session as the Python suite, with @grpc/grpc-js and @grpc/proto-loader loading the
// repo's protos at run time: tenants through the gateway with the operator key, google.rpc
// error details decoded, and the audit log read as a server stream.
//
// Run by tests/interop/node.sh, which installs the packages, starts `palisade dev` and exports
// PALISADE_GATEWAY, PALISADE_API_KEY and PALISADE_PROTO_DIR.
'use strict';

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');

const protoDir = requireEnv('PALISADE_PROTO_DIR');
const gateway = requireEnv('PALISADE_GATEWAY');
const apiKey = requireEnv('PALISADE_API_KEY');

function requireEnv(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run tests/interop/node.sh`);
  return value;
}

const definition = protoLoader.loadSync(
  [
    'palisade/identity/v1/tenant.proto',
    'palisade/compliance/v1/audit.proto',
    'palisade/observability/v1/status.proto',
  ],
  // keepCase: field names as in the protos (`display_name`), as every other client spells them.
  { includeDirs: [protoDir], keepCase: true, longs: String, enums: String, defaults: true },
);
const palisade = grpc.loadPackageDefinition(definition).palisade;

// The google.rpc error model, to decode the `grpc-status-details-bin` trailer.
const errorModel = new protobuf.Root();
errorModel.resolvePath = (_origin, target) => `${protoDir}/${target}`;
errorModel.loadSync(['google/rpc/status.proto', 'google/rpc/error_details.proto'], { keepCase: true });
const RpcStatus = errorModel.lookupType('google.rpc.Status');

/** The google.rpc.Status of a failed call, with its details decoded by type name. */
function richStatus(error) {
  const [raw] = error.metadata.get('grpc-status-details-bin');
  assert.ok(raw, `no google.rpc.Status details on ${error.message}`);
  const status = RpcStatus.decode(raw);
  const details = {};
  for (const detail of status.details) {
    const typeName = detail.type_url.split('/').pop();
    details[typeName.replace('google.rpc.', '')] = errorModel.lookupType(typeName).decode(detail.value);
  }
  return { code: status.code, message: status.message, details };
}

let tenants, audit, status;
const operator = new grpc.Metadata();
operator.set('authorization', `ApiKey ${apiKey}`);

before(() => {
  const credentials = grpc.credentials.createInsecure();
  tenants = new palisade.identity.v1.TenantService(gateway, credentials);
  audit = new palisade.compliance.v1.AuditService(gateway, credentials);
  status = new palisade.observability.v1.StatusService(gateway, credentials);
});

after(() => {
  for (const client of [tenants, audit, status]) client.close();
});

/** Calls a unary method and resolves with its response or rejects with the grpc error. */
function call(client, method, request, metadata = new grpc.Metadata()) {
  return new Promise((resolve, reject) => {
    client[method](request, metadata, (error, response) => (error ? reject(error) : resolve(response)));
  });
}

/** Collects a server stream into an array, or rejects with the grpc error. */
function collect(stream) {
  return new Promise((resolve, reject) => {
    const items = [];
    stream.on('data', (item) => items.push(item));
    stream.on('error', reject);
    stream.on('end', () => resolve(items));
  });
}

async function rejection(promise) {
  try {
    await promise;
  } catch (error) {
    return error;
  }
  assert.fail('expected the call to fail');
}

test('creates, gets and lists a tenant', async () => {
  const created = await call(tenants, 'CreateTenant', {
    tenant_id: 'hooli',
    tenant: { display_name: 'Hooli', plan: 'PLAN_STANDARD' },
  }, operator);
  assert.equal(created.name, 'tenants/hooli');
  assert.equal(created.plan, 'PLAN_STANDARD');
  assert.equal(created.state, 'TENANT_STATE_ACTIVE');

  const fetched = await call(tenants, 'GetTenant', { name: 'tenants/hooli' }, operator);
  assert.deepEqual(fetched, created);

  const listed = await call(tenants, 'ListTenants', { filter: 'plan = "PLAN_STANDARD"' }, operator);
  assert.deepEqual(listed.tenants.map((t) => t.name), ['tenants/hooli']);
});

test('bad input carries BadRequest field violations', async () => {
  const error = await rejection(call(tenants, 'CreateTenant', {
    tenant_id: 'Not_OK',
    tenant: { display_name: '' },
  }, operator));
  assert.equal(error.code, grpc.status.INVALID_ARGUMENT);
  const rich = richStatus(error);
  assert.equal(rich.code, grpc.status.INVALID_ARGUMENT);
  const fields = rich.details.BadRequest.field_violations.map((v) => v.field).sort();
  assert.deepEqual(fields, ['tenant.display_name', 'tenant_id']);
  assert.equal(rich.details.ErrorInfo.reason, 'INVALID_ARGUMENT');
  assert.equal(rich.details.ErrorInfo.domain, 'palisade.dev');
});

test('a missing tenant is NOT_FOUND with ErrorInfo', async () => {
  const error = await rejection(call(tenants, 'GetTenant', { name: 'tenants/nobody' }, operator));
  assert.equal(error.code, grpc.status.NOT_FOUND);
  const { details } = richStatus(error);
  assert.equal(details.ErrorInfo.reason, 'NOT_FOUND');
  assert.equal(details.ErrorInfo.metadata.resource, 'tenants/nobody');
});

test('a call without a credential is UNAUTHENTICATED', async () => {
  const error = await rejection(call(tenants, 'ListTenants', {}));
  assert.equal(error.code, grpc.status.UNAUTHENTICATED);
  assert.equal(richStatus(error).details.ErrorInfo.reason, 'UNAUTHENTICATED');
});

test('the audit log is exported as a server stream in chain order', async () => {
  await call(tenants, 'CreateTenant', { tenant_id: 'piedpiper', tenant: { display_name: 'Pied Piper' } }, operator);
  // Audit events arrive asynchronously (outbox → relay → compliance).
  const deadline = Date.now() + 10_000;
  let events = [];
  while (events.length === 0 && Date.now() < deadline) {
    events = await collect(audit.ExportAuditEvents({ parent: 'tenants/piedpiper' }, operator));
    if (events.length === 0) await new Promise((resolve) => setTimeout(resolve, 100));
  }
  assert.deepEqual(events.map((e) => e.action), ['identity.tenants.create']);
  assert.equal(events[0].sequence, '1');
  assert.equal(events[0].resource, 'tenants/piedpiper');
  assert.deepEqual(events[0].previous_hash, Buffer.alloc(32));
  assert.equal(events[0].hash.length, 32);

  const none = await collect(audit.ExportAuditEvents({
    parent: 'tenants/piedpiper',
    filter: 'action = "identity.tenants.delete"',
  }, operator));
  assert.deepEqual(none, []);
});

test('a bad export fails before the stream starts', async () => {
  const error = await rejection(collect(audit.ExportAuditEvents({ parent: 'piedpiper' }, operator)));
  assert.equal(error.code, grpc.status.INVALID_ARGUMENT);
  const fields = richStatus(error).details.BadRequest.field_violations.map((v) => v.field);
  assert.deepEqual(fields, ['parent']);
});

test('the status page is public', async () => {
  const report = await call(status, 'GetStatus', {});
  assert.equal(report.overall, 'SERVING_STATE_SERVING');
  assert.deepEqual(report.components.map((c) => c.component), ['identity', 'compliance', 'observability', 'gateway']);
});
