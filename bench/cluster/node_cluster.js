// Node's cluster with an equivalent responder (bench/bench_cluster.py runs it with
// NODE_CLUSTER_SCHED_POLICY=rr or none, and PORT / WORKERS in the environment).
const cluster = require("cluster");
const http = require("http");
const workers = Number(process.env.WORKERS || 2);
if (cluster.isPrimary) {
  for (let i = 0; i < workers; i++) cluster.fork();
  process.on("SIGTERM", () => { for (const id in cluster.workers) cluster.workers[id].kill(); process.exit(0); });
} else {
  http.createServer((req, res) => {
    const body = `hello from worker ${cluster.worker.id} (pid ${process.pid})\n`;
    res.writeHead(200, { "Content-Type": "text/plain", "Content-Length": Buffer.byteLength(body) });
    res.end(body);
  }).listen(Number(process.env.PORT), "127.0.0.1");
}
