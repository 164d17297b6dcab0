package server

import (
	"context"
	"errors"
)

// Run starts a node from cfg and blocks until ctx is cancelled, then shuts
// down gracefully (a leader first hands leadership to another voter).
func Run(ctx context.Context, cfg Config) error {
	return errors.New("server: not wired yet")
}
