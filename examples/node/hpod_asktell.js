#!/usr/bin/env node
// An hpod client in Node.js: creates a study and trains it with an ask/tell loop over gRPC.
//
//   npm ci && node hpod_asktell.js --address 127.0.0.1:50051 [--parallel 2] [--token T]
//
// It loads ../../proto/hpod/v1/hpod.proto at run time (no generated code), so it shows what any
// language needs: the .proto file and a gRPC library. The "training" is a toy learning curve,
// value = (x - 0.3)^2 + 0.1 * lr-dependent term / sqrt(step), so the example has no dependencies.
// On success it prints one JSON line {study_id, state, trials, best} and exits 0.
'use strict';

const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO = path.join(__dirname, '..', '..', 'proto', 'hpod', 'v1', 'hpod.proto');

function parseArgs(argv) {
  const args = { address: process.env.HPOD_ADDRESS || '127.0.0.1:50051', parallel: 2,
    token: process.env.HPOD_TOKEN || '', maxResource: 9 };
  for (let i = 2; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, '');
    if (key === 'address') args.address = argv[i + 1];
    else if (key === 'parallel') args.parallel = Number(argv[i + 1]);
    else if (key === 'token') args.token = argv[i + 1];
    else if (key === 'max-resource') args.maxResource = Number(argv[i + 1]);
    else throw new Error(`unknown option ${argv[i]}`);
  }
  return args;
}

// google.protobuf.Struct arrives as {fields: {name: {numberValue: ...}}}: plain JS both ways.
function fromValue(v) {
  if (v.kind === 'numberValue') return v.numberValue;
  if (v.kind === 'stringValue') return v.stringValue;
  if (v.kind === 'boolValue') return v.boolValue;
  if (v.kind === 'nullValue') return null;
  if (v.kind === 'listValue') return v.listValue.values.map(fromValue);
  if (v.kind === 'structValue') return fromStruct(v.structValue);
  return undefined;
}

function fromStruct(s) {
  const out = {};
  for (const [k, v] of Object.entries((s && s.fields) || {})) out[k] = fromValue(v);
  return out;
}

function toValue(x) {
  if (x === null) return { nullValue: 'NULL_VALUE' };
  if (typeof x === 'number') return { numberValue: x };
  if (typeof x === 'string') return { stringValue: x };
  if (typeof x === 'boolean') return { boolValue: x };
  if (Array.isArray(x)) return { listValue: { values: x.map(toValue) } };
  return { structValue: toStruct(x) };
}

function toStruct(obj) {
  const fields = {};
  for (const [k, v] of Object.entries(obj)) fields[k] = toValue(v);
  return { fields };
}

function connect(address, token) {
  const def = protoLoader.loadSync(PROTO, {
    keepCase: true, longs: Number, enums: String, defaults: true, oneofs: true,
  });
  const hpod = grpc.loadPackageDefinition(def).hpod.v1;
  const client = new hpod.Hpod(address, grpc.credentials.createInsecure());
  const metadata = new grpc.Metadata();
  if (token) metadata.set('authorization', `Bearer ${token}`);
  // Promise-returning calls; a gRPC error carries the server's actionable message.
  return (method, request) => new Promise((resolve, reject) => {
    client[method](request, metadata, { deadline: Date.now() + 30000 }, (err, resp) => {
      if (err) reject(new Error(`${method}: ${grpc.status[err.code]}: ${err.details}`));
      else resolve(resp);
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function trainStep(config, step) {
  const speed = 0.3 + Math.exp(-((Math.log10(config.lr) + 2) ** 2));
  return (config.x - 0.3) ** 2 + config.depth * 0.01 + 1.0 / Math.pow(step, speed);
}

async function runJobs(call, studyId, workerName) {
  let jobs = 0;
  for (;;) {
    const resp = await call('AskJob', { study_id: studyId, client_id: workerName });
    if (!resp.has_job) {
      if (resp.study_done) return jobs;
      await sleep(1000 * (resp.retry_after_seconds || 0.2));
      continue;
    }
    const job = resp.job;
    const config = fromStruct(job.config);
    let value = NaN;
    let reached = job.from_resource;
    for (let step = Math.floor(job.from_resource) + 1; step <= job.to_resource; step += 1) {
      value = trainStep(config, step);
      reached = step;
      const r = await call('ReportProgress', { study_id: studyId, job_id: job.job_id,
        resource: step, value });
      if (r.decision === 'DECISION_STOP') break;  // the algorithm says stop: complete early
    }
    await call('CompleteJob', { study_id: studyId, job_id: job.job_id, value,
      resource: reached });
    jobs += 1;
  }
}

async function main() {
  const args = parseArgs(process.argv);
  const call = connect(args.address, args.token);
  const spec = {
    name: 'node ask/tell example',
    objective: { metric: 'loss', direction: 'DIRECTION_MINIMIZE' },
    resource: { name: 'step', max_resource: args.maxResource, eta: 3 },
    algorithm: { name: 'hyperband', settings: toStruct({}) },
    seed: 1,
    search_space: [
      { name: 'x', float_range: { low: 0, high: 1, scale: 'SCALE_LINEAR' } },
      { name: 'lr', float_range: { low: 1e-4, high: 1, scale: 'SCALE_LOG' } },
      { name: 'depth', int_range: { low: 1, high: 8, scale: 'SCALE_LINEAR' } },
    ],
  };
  const study = await call('CreateStudy', { spec });
  const workers = Array.from({ length: args.parallel },
    (_, i) => runJobs(call, study.id, `node-${process.pid}-${i}`));
  const jobs = (await Promise.all(workers)).reduce((a, b) => a + b, 0);
  const info = await call('GetStudy', { study_id: study.id });
  const best = await call('GetBestTrial', { study_id: study.id });
  console.log(JSON.stringify({
    study_id: study.id, state: info.state, trials: Number(info.trials_total), jobs,
    best: { trial: Number(best.id), value: best.value, config: fromStruct(best.config) },
  }));
  return info.state === 'STUDY_STATE_COMPLETED' ? 0 : 1;
}

main().then((code) => process.exit(code), (err) => {
  console.error(`hpod node example: ${err.message}`);
  process.exit(2);
});
