package storage_test

import (
	"github.com/blixard/blixard/internal/raftnode"
	"github.com/blixard/blixard/internal/storage"
)

// The production implementations of raftnode's storage interfaces.
var (
	_ raftnode.LogStorage = (*storage.LogStore)(nil)
	_ raftnode.StateStore = (*storage.StateDB)(nil)
)
