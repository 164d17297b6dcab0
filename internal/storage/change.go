package storage

// Change is one state-table record to write (Value != nil) or delete
// (Value == nil).
type Change struct {
	Table string
	Key   []byte
	Value []byte
}

// The state tables. Every one is created when the database is opened, so a
// fresh node never meets a missing table.
const (
	TableMembers        = "members"
	TableRemovedMembers = "removed_members"
	TableWorkers        = "workers"
	TableWorkerStatus   = "worker_status"
	TableKV             = "kv"
	TableTasks          = "tasks"
	TableVMs            = "vms"
	TableTokens         = "tokens"
)

// Tables lists every state table.
var Tables = []string{TableMembers, TableRemovedMembers, TableWorkers, TableWorkerStatus, TableKV, TableTasks, TableVMs, TableTokens}
