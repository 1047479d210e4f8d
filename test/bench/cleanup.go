package main

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// cleanups is the harness's one undo stack (LIFO). Every resource the
// harness makes — namespaces, daemons, uplinks, helper processes, temp
// dirs, CNI attachments — registers its undo here the moment it exists, so
// that the normal end of a variant, a failure and Ctrl-C all run the same
// code. Bound: one entry per resource, a few dozen per variant and two per
// pod of the ADD/DEL latency run (2 × pods × 4 runs).
type cleanups struct {
	run    sync.Mutex // held by one runTo at a time: strict LIFO even when Ctrl-C races a teardown
	mu     sync.Mutex // guards the fields below
	fns    []func()
	names  []string
	closed bool // after close, add runs fn at once
}

// add registers fn under a name (for the log when it is slow). After
// close (Ctrl-C while a step was still making something) fn runs at once.
func (c *cleanups) add(name string, fn func()) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		fn()
		return
	}
	c.fns = append(c.fns, fn)
	c.names = append(c.names, name)
	c.mu.Unlock()
}

// mark is the current depth: runTo(mark) undoes everything added since.
func (c *cleanups) mark() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.fns)
}

// runTo pops and runs entries above depth m, newest first. Runners take
// turns (c.run), so a Ctrl-C during a normal teardown waits for it and then
// goes on below it: nothing runs twice or out of order (a CNI DEL before
// the daemon it needs is killed). An entry that panics is reported and the
// rest still run.
func (c *cleanups) runTo(m int) {
	c.run.Lock()
	defer c.run.Unlock()
	for {
		c.mu.Lock()
		if len(c.fns) <= m {
			c.mu.Unlock()
			return
		}
		i := len(c.fns) - 1
		fn, name := c.fns[i], c.names[i]
		c.fns, c.names = c.fns[:i], c.names[:i]
		c.mu.Unlock()
		start := time.Now()
		func() {
			defer func() {
				if r := recover(); r != nil {
					fmt.Fprintf(os.Stderr, "bench: cleanup %s panicked: %v\n", name, r)
				}
			}()
			fn()
		}()
		if d := time.Since(start); d > 5*time.Second {
			fmt.Fprintf(os.Stderr, "bench: cleanup %s took %v\n", name, d.Round(time.Millisecond))
		}
	}
}

// close runs every entry and makes later adds run at once.
func (c *cleanups) close() {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	c.runTo(0)
}

// fatal is what tb.Fatal panics with; catch turns it back into an error.
type fatal struct{ msg string }

// tb adapts the harness to the testing.TB the cnitest helpers take, so that
// the benchmark builds plugins, makes namespaces and drives libcni with the
// same code as the end-to-end tests. Fatal panics with fatal (recovered by
// catch at the step that called the helper); Cleanup goes to the harness's
// undo stack; TempDir is a real temp dir removed there. Only the methods
// below are implemented: the embedded nil TB makes any other call panic,
// which catch reports as an error naming the method's absence.
type tb struct {
	testing.TB
	name   string
	undo   *cleanups
	ctx    context.Context
	mu     sync.Mutex
	failed bool
	errs   []string
}

func newTB(name string, undo *cleanups, ctx context.Context) *tb {
	return &tb{name: name, undo: undo, ctx: ctx}
}

func (t *tb) Helper()                  {}
func (t *tb) Name() string             { return t.name }
func (t *tb) Cleanup(fn func())        { t.undo.add("cnitest cleanup", fn) }
func (t *tb) Context() context.Context { return t.ctx }
func (t *tb) Log(args ...any)          { fmt.Fprintln(os.Stderr, append([]any{"bench:"}, args...)...) }
func (t *tb) Logf(f string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+f+"\n", args...)
}

func (t *tb) Error(args ...any) { t.record(fmt.Sprint(args...)) }
func (t *tb) Errorf(f string, args ...any) {
	t.record(fmt.Sprintf(f, args...))
}

func (t *tb) record(msg string) {
	t.mu.Lock()
	t.failed = true
	t.errs = append(t.errs, msg)
	t.mu.Unlock()
	fmt.Fprintln(os.Stderr, "bench: error:", msg)
}

func (t *tb) Fail() { t.mu.Lock(); t.failed = true; t.mu.Unlock() }
func (t *tb) Failed() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.failed
}
func (t *tb) FailNow()                  { t.Fail(); panic(fatal{"FailNow"}) }
func (t *tb) Fatal(args ...any)         { t.Fail(); panic(fatal{fmt.Sprint(args...)}) }
func (t *tb) Fatalf(f string, a ...any) { t.Fail(); panic(fatal{fmt.Sprintf(f, a...)}) }
func (t *tb) Skip(args ...any)          { panic(fatal{"skipped: " + fmt.Sprint(args...)}) }
func (t *tb) Skipf(f string, a ...any)  { panic(fatal{"skipped: " + fmt.Sprintf(f, a...)}) }
func (t *tb) SkipNow()                  { panic(fatal{"skipped"}) }
func (t *tb) Skipped() bool             { return false }
func (t *tb) Setenv(key, value string)  { panic(fatal{"Setenv is not supported by the bench harness"}) }
func (t *tb) Chdir(dir string)          { panic(fatal{"Chdir is not supported by the bench harness"}) }
func (t *tb) ArtifactDir() string       { return t.TempDir() }
func (t *tb) Attr(key, value string)    {}
func (t *tb) TempDir() string {
	d, err := os.MkdirTemp("", "bench-"+t.name+"-")
	if err != nil {
		panic(fatal{fmt.Sprintf("temp dir: %v", err)})
	}
	t.undo.add("temp dir "+d, func() { os.RemoveAll(d) })
	return d
}

// catch runs fn and turns a tb.Fatal (or any other panic: a nil-TB method,
// a bug) into an error, so one variant's failure becomes its row's reason
// and the harness goes on to the next.
func catch(fn func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			if f, ok := r.(fatal); ok {
				err = fmt.Errorf("%s", f.msg)
				return
			}
			buf := make([]byte, 4096)
			buf = buf[:runtime.Stack(buf, false)]
			err = fmt.Errorf("panic: %v\n%s", r, strings.TrimSpace(string(buf)))
		}
	}()
	return fn()
}
