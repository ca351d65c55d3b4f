// A second-language client of SubmitOrderColumns (issue #17): builds OrderColumns from plain
// arrays with @grpc/grpc-js and @grpc/proto-loader, sends it, prints the AckColumns as JSON.
// Usage: node submit_columns.js HOST:PORT API_KEY PROTO_DIR
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const [address, apiKey, protoDir] = process.argv.slice(2);
const definition = protoLoader.loadSync("hftgate/v1/execution.proto", {
  includeDirs: [protoDir],
  keepCase: true,
  longs: String, // int64 as decimal strings: no precision lost
  enums: Number,
  defaults: true,
});
const api = grpc.loadPackageDefinition(definition).hftgate.v1;
const client = new api.ExecutionService(address, grpc.credentials.createInsecure());

// Three bids and one order for a symbol the service does not know: columns, one entry per order.
const orders = {
  symbols: ["BTCUSDT", "NOPE"],
  symbol_index: [0, 0, 0, 1],
  client_order_id: ["js-1", "js-2", "js-3", "js-4"],
  side: [1, 1, 1, 1], // SIDE_BUY
  order_type: [1, 1, 1, 1], // ORDER_TYPE_LIMIT
  time_in_force: [1, 1, 1, 1], // TIME_IN_FORCE_GTC
  price_ticks: ["4990000", "4989000", "4988000", "100"],
  quantity_lots: ["1", "2", "3", "1"],
};
const metadata = new grpc.Metadata();
metadata.add("x-api-key", apiKey);
client.SubmitOrderColumns({ orders }, metadata, { deadline: Date.now() + 10000 }, (err, reply) => {
  if (err) {
    console.error(`${err.code} ${err.details}`);
    process.exit(1);
  }
  console.log(JSON.stringify(reply.acks));
  client.close();
});
