package plugin

import (
	"errors"
	"fmt"
)

// undoList is ADD's rollback: each step that changed something registers
// how to take it back, and a failed ADD runs them last-first (IPAM release
// after the veth is gone, the veth after the daemon let go of it). Bound:
// one entry per ADD step (a handful).
type undoList struct {
	steps []undoStep
}

type undoStep struct {
	name string
	fn   func() error
}

// add registers fn, named for the log, to run when the ADD fails.
func (u *undoList) add(name string, fn func() error) {
	u.steps = append(u.steps, undoStep{name, fn})
}

// run calls every step, last registered first. A failing step does not
// stop the others; their errors are joined, each named.
func (u *undoList) run() error {
	var errs []error
	for i := len(u.steps) - 1; i >= 0; i-- {
		s := u.steps[i]
		if err := s.fn(); err != nil {
			errs = append(errs, fmt.Errorf("undo %s: %w", s.name, err))
		}
	}
	u.steps = nil
	return errors.Join(errs...)
}
