// Runs once, when the mongo service starts on an empty data volume
// (/docker-entrypoint-initdb.d), authenticated as the root user the image creates from
// MONGO_INITDB_ROOT_USERNAME / MONGO_INITDB_ROOT_PASSWORD_FILE.
// Creates the services' own user with only what they need; they never use root.
const fs = require("fs");
const password = fs.readFileSync("/run/secrets/mongo_outbox_password", "utf8").trim();
db.getSiblingDB("admin").createUser({
  user: "outbox",
  pwd: password,
  roles: [
    { role: "readWrite", db: "outbox" }, // documents, outbox, users, leases, transactions
    { role: "dbAdmin", db: "outbox" }, // createIndexes, collMod (the outbox TTL)
    { role: "clusterMonitor", db: "admin" }, // replSetGetStatus, serverStatus (outbox status)
    { role: "read", db: "local" }, // oplog.rs: how much change-stream history is left
  ],
});
