// Node's cluster with an equivalent responder (bench/bench_cluster.py runs it with
// NODE_CLUSTER_SCHED_POLICY=rr or none, and PORT / WORKERS in the environment).  The
// primary forks a new worker when one dies (as a Node deployment does); each worker
// prints how many requests it answered when it is told to stop.
const cluster = require("cluster");
const http = require("http");
const workers = Number(process.env.WORKERS || 2);
if (cluster.isPrimary) {
  let stopping = false;
  for (let i = 0; i < workers; i++) cluster.fork();
  cluster.on("exit", () => { if (!stopping) cluster.fork(); });
  process.on("SIGTERM", () => {
    stopping = true;
    for (const id in cluster.workers) cluster.workers[id].process.kill("SIGTERM");
    cluster.on("exit", () => { if (Object.keys(cluster.workers).length === 0) process.exit(0); });
  });
} else {
  let served = 0;
  process.on("SIGTERM", () => { process.stdout.write(`served ${served}\n`, () => process.exit(0)); });
  http.createServer((req, res) => {
    served++;
    res.writeHead(200, { "Content-Length": 6 });
    res.end("hello\n");
  }).listen(Number(process.env.PORT), "127.0.0.1");
}
