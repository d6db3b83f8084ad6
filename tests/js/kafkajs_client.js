// KafkaJS (Node.js; its own implementation of the Kafka protocol) against the cloud,
// driven by tests/python/test_kafkajs.py. One command per run:
//
//   node kafkajs_client.js <command> <bootstrap> '<json spec>'
//
// Each writes JSON lines to stdout; a failure exits non-zero with the error on stderr.
'use strict';

const { Kafka, logLevel, CompressionTypes, CompressionCodecs } = require('kafkajs');
const fzstd = require('fzstd');

const [command, broker, specText] = process.argv.slice(2);
const spec = JSON.parse(specText || '{}');

// KafkaJS has no ZSTD codec of its own, and the edge's uplink batches are zstd by
// default (stored and served as produced, as Apache Kafka does). Its users register one:
// @kafkajs/zstd (native; its build needs node-gyp's downloads) or, as here, a pure-JS
// decompressor. `"zstd": false` in the spec leaves KafkaJS as it ships.
if (spec.zstd !== false) {
  CompressionCodecs[CompressionTypes.ZSTD] = () => ({
    async compress() {
      throw new Error('zstd compression is not used by these tests');
    },
    async decompress(buffer) {
      return Buffer.from(fzstd.decompress(buffer));
    },
  });
}
const kafka = new Kafka({
  clientId: 'kafkajs-test',
  brokers: [broker],
  logLevel: logLevel.NOTHING,
  retry: { retries: 10 },
});

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const emit = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');
const headers = (h) =>
  Object.fromEntries(Object.entries(h || {}).map(([k, v]) => [k, v ? v.toString() : null]));

async function until(what, seconds, cond) {
  const deadline = Date.now() + seconds * 1000;
  for (;;) {
    const v = await cond();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${seconds}s waiting for ${what}`);
    await sleep(50);
  }
}

// An idempotent producer (acks all), `count` records in sends of `batch`: key k<i % 5>,
// value v<i>, header n=<i>. Emits every send's partition and base offset.
async function produce({ topic, count, batch = 100, compression = 'none' }) {
  const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1 });
  await producer.connect();
  const codec = { none: CompressionTypes.None, gzip: CompressionTypes.GZIP }[compression];
  const sends = [];
  for (let start = 0; start < count; start += batch) {
    const messages = [];
    for (let i = start; i < Math.min(count, start + batch); i++) {
      messages.push({ key: `k${i % 5}`, value: `v${i}`, headers: { n: `${i}` } });
    }
    const meta = await producer.send({ topic, acks: -1, compression: codec, messages });
    for (const m of meta) sends.push([m.partition, Number(m.baseOffset), m.errorCode]);
  }
  await producer.disconnect();
  emit({ sends });
}

// `members` consumers of group `group` subscribe to `topic` (from the beginning). Once
// the group is stable with every member holding partitions, emits {ready}; the caller
// then produces. Consumes until `expect` records arrived, disconnects every member
// (committing), and emits each record with the member that got it.
async function group({ topic, group: groupId, members, expect, timeout = 60 }) {
  const admin = kafka.admin();
  await admin.connect();
  const records = [];
  const consumers = [];
  for (let m = 0; m < members; m++) {
    const c = kafka.consumer({ groupId, sessionTimeout: 10000, heartbeatInterval: 500 });
    await c.connect();
    await c.subscribe({ topic, fromBeginning: true });
    await c.run({
      eachMessage: async ({ partition, message }) => {
        records.push({
          member: m,
          partition,
          offset: Number(message.offset),
          key: message.key ? message.key.toString() : null,
          value: message.value.toString(),
          headers: headers(message.headers),
        });
      },
    });
    consumers.push(c);
  }
  const described = await until('a stable group with every member assigned', timeout, async () => {
    const g = (await admin.describeGroups([groupId])).groups[0];
    const assigned = g.members.filter((x) => x.memberAssignment.length > 0);
    return g.state === 'Stable' && assigned.length === members && g;
  });
  emit({ ready: true, protocol: described.protocol, members: described.members.length });
  await until(`${expect} records`, timeout, () => records.length >= expect);
  for (const c of consumers) await c.disconnect();
  const committed = await admin.fetchOffsets({ groupId, topics: [topic] });
  await admin.disconnect();
  emit({
    records,
    committed: committed[0].partitions.map((p) => [p.partition, Number(p.offset)]),
  });
}

// Admin calls a user makes: create with a config, describe it, add partitions, offsets,
// offsets by time, groups, delete.
async function admin({ topic, partitions, retention_ms, grow_to }) {
  const a = kafka.admin();
  await a.connect();
  const created = await a.createTopics({
    waitForLeaders: true,
    topics: [{ topic, numPartitions: partitions, configEntries: [{ name: 'retention.ms', value: `${retention_ms}` }] }],
  });
  const configs = await a.describeConfigs({
    includeSynonyms: false,
    resources: [{ type: 2, name: topic, configNames: ['retention.ms'] }],
  });
  const entry = configs.resources[0].configEntries.find((e) => e.configName === 'retention.ms');
  await a.createPartitions({ topicPartitions: [{ topic, count: grow_to }] });
  const meta = await a.fetchTopicMetadata({ topics: [topic] });
  const cluster = await a.describeCluster();
  const offsets = await a.fetchTopicOffsets(topic);
  const byTime = await a.fetchTopicOffsetsByTimestamp(topic, Date.now() - 60000);
  await a.deleteTopics({ topics: [topic] });
  const after = await a.listTopics();
  await a.disconnect();
  emit({
    created,
    retention_ms: entry ? entry.configValue : null,
    partitions: meta.topics[0].partitions.map((p) => p.partitionId).sort((x, y) => x - y),
    brokers: cluster.brokers.length,
    offsets: offsets.map((o) => [o.partition, Number(o.low), Number(o.high)]),
    by_time: byTime.map((o) => [o.partition, Number(o.offset)]),
    listed_after_delete: after.includes(topic),
  });
}

// Admin calls after creation: alter a config (AlterConfigs) and delete records
// (DeleteRecords) below an offset of partition 0.
async function alter({ topic, retention_ms, records, delete_before }) {
  const a = kafka.admin();
  await a.connect();
  await a.createTopics({ waitForLeaders: true, topics: [{ topic, numPartitions: 1 }] });
  const p = kafka.producer();
  await p.connect();
  const messages = Array.from({ length: records }, (_, i) => ({ value: `v${i}` }));
  await p.send({ topic, messages });
  await p.disconnect();
  await a.alterConfigs({
    validateOnly: false,
    resources: [{ type: 2, name: topic, configEntries: [{ name: 'retention.ms', value: `${retention_ms}` }] }],
  });
  const configs = await a.describeConfigs({
    includeSynonyms: false,
    resources: [{ type: 2, name: topic, configNames: ['retention.ms'] }],
  });
  const entry = configs.resources[0].configEntries.find((e) => e.configName === 'retention.ms');
  await a.deleteTopicRecords({ topic, partitions: [{ partition: 0, offset: `${delete_before}` }] });
  const offsets = await a.fetchTopicOffsets(topic);
  await a.disconnect();
  emit({
    retention_ms: entry ? entry.configValue : null,
    offsets: offsets.map((o) => [o.partition, Number(o.low), Number(o.high)]),
  });
}

const commands = { produce, group, admin, alter };
(commands[command] || (() => Promise.reject(new Error(`unknown command ${command}`))))(spec)
  .then(() => process.exit(0))
  .catch((e) => {
    process.stderr.write(`${e.stack || e}\n`);
    process.exit(1);
  });
