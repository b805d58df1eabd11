// node-postgres scenarios for tests/drivers.rs.
//
// Usage: node node_pg_scenarios.js SCENARIO, with NODE_PATH pointing at the
// node_modules the test installed. The connection comes from the PG*
// environment variables. Prints a transcript (one line per key, one per
// list item) that the Rust test compares with the direct run's.
'use strict';

const { Client, Pool } = require('pg');
const pgVersion = require('pg/package.json').version;

function errorKey(err) {
  return `${err.code || err.name}: ${err.message}`;
}

function count(counter, key) {
  counter[key] = (counter[key] || 0) + 1;
}

// `client.connect(); client.end()` without waiting for the login: the
// Terminate goes out before the startup packet, and Postgres closes
// silently (the connect promise then never settles). Repeated 100 times;
// every error event and every settled connect outcome counts.
async function connectEnd() {
  const errorEvents = {};
  const connectOutcomes = {};
  for (let i = 0; i < 100; i++) {
    const client = new Client();
    client.on('error', (err) => count(errorEvents, errorKey(err)));
    client.connect().then(
      () => count(connectOutcomes, 'connected'),
      (err) => count(connectOutcomes, `connect failed: ${errorKey(err)}`),
    );
    await client.end();
  }
  // Late events would come after the sockets close.
  await new Promise((resolve) => setTimeout(resolve, 200));
  return { error_events: errorEvents, connect_outcomes: connectOutcomes };
}

async function step(steps, name, run) {
  try {
    steps.push([name, await run()]);
  } catch (err) {
    steps.push([name, { error: errorKey(err) }]);
  }
}

function rowsOf(result) {
  return { command: result.command, rows: result.rows };
}

// A query, a parameterized one, a named prepared one, an error inside a
// transaction and its ROLLBACK, and a LISTEN/NOTIFY to itself.
async function queries() {
  const client = new Client();
  const errorEvents = {};
  client.on('error', (err) => count(errorEvents, errorKey(err)));
  const notifications = [];
  client.on('notification', (msg) => {
    notifications.push([msg.channel, msg.payload, msg.processId === client.processID]);
  });
  await client.connect();
  const steps = [];
  await step(steps, 'query', async () => rowsOf(await client.query("SELECT 1 AS one, 'x' AS x")));
  await step(steps, 'parameterized', async () =>
    rowsOf(await client.query('SELECT $1::int + $2::int AS s', [40, 2])));
  for (let i = 0; i < 3; i++) {
    await step(steps, `named prepared ${i}`, async () =>
      rowsOf(await client.query({ name: 'add_one', text: 'SELECT $1::int + 1 AS n', values: [i] })));
  }
  await step(steps, 'create', async () =>
    rowsOf(await client.query('DROP TABLE IF EXISTS drv_node; CREATE TABLE drv_node (a int)')));
  await step(steps, 'begin', async () => rowsOf(await client.query('BEGIN')));
  await step(steps, 'insert', async () => rowsOf(await client.query('INSERT INTO drv_node VALUES (1)')));
  await step(steps, 'error inside', async () => rowsOf(await client.query('SELECT 1 / 0')));
  await step(steps, 'after the error', async () => rowsOf(await client.query('SELECT 1')));
  await step(steps, 'rollback', async () => rowsOf(await client.query('ROLLBACK')));
  await step(steps, 'rows after rollback', async () =>
    rowsOf(await client.query('SELECT count(*)::int AS n FROM drv_node')));
  await step(steps, 'listen', async () => rowsOf(await client.query('LISTEN drv_node_chan')));
  await step(steps, 'notify', async () =>
    rowsOf(await client.query("NOTIFY drv_node_chan, 'to myself'")));
  for (let i = 0; i < 100 && notifications.length === 0; i++) {
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  await client.end();
  return { steps, notifications, error_events: errorEvents };
}

// A Pool of 10: 300 named prepared queries at once (each client prepares
// 'double' once, on its own connection), then transactions checked out and
// released, one of them failing and rolled back.
async function pool() {
  const pool = new Pool({ max: 10 });
  const errorEvents = {};
  pool.on('error', (err) => count(errorEvents, errorKey(err)));
  const errors = {};
  let sum = 0;
  await Promise.all(Array.from({ length: 300 }, async (_, i) => {
    try {
      const r = await pool.query({ name: 'double', text: 'SELECT $1::int * 2 AS d', values: [i] });
      sum += r.rows[0].d;
    } catch (err) {
      count(errors, errorKey(err));
    }
  }));
  const steps = [];
  for (let i = 0; i < 10; i++) {
    const client = await pool.connect();
    await step(steps, `begin ${i}`, async () => rowsOf(await client.query('BEGIN')));
    const sql = i % 3 === 0 ? 'SELECT 1 / 0' : `SELECT ${i} AS i`;
    await step(steps, `query ${i}`, async () => rowsOf(await client.query(sql)));
    const end = i % 3 === 0 ? 'ROLLBACK' : 'COMMIT';
    await step(steps, `${end.toLowerCase()} ${i}`, async () => rowsOf(await client.query(end)));
    client.release();
  }
  await pool.end();
  return { sum, errors, steps, error_events: errorEvents };
}

function dump(transcript) {
  for (const key of Object.keys(transcript).sort()) {
    const value = transcript[key];
    if (Array.isArray(value)) {
      console.log(`${key}: [${value.length} items]`);
      for (const item of value) console.log(`  ${JSON.stringify(item)}`);
    } else {
      console.log(`${key}: ${JSON.stringify(value)}`);
    }
  }
}

const SCENARIOS = { connect_end: connectEnd, queries, pool };

async function main() {
  // A hung driver ends the run before the Rust test's own limit.
  setTimeout(() => {
    console.error('node_pg_scenarios.js: still running after 100 s');
    process.exit(1);
  }, 100000).unref();
  const transcript = await SCENARIOS[process.argv[2]]();
  transcript.driver = `node-postgres ${pgVersion}`;
  dump(transcript);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
