package daemon

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// One daemon per state dir, stack netns and uplink: a second claim of any
// of them fails with an error naming the daemon that holds it (pid,
// socket), and holds nothing; released claims can be taken again.
func TestClaims(t *testing.T) {
	locks := t.TempDir()
	flags := func(name, netns, uplink string) *ServeFlags {
		d := filepath.Join(t.TempDir(), name)
		return &ServeFlags{Socket: filepath.Join(d, "daemon.sock"), StateDir: filepath.Join(d, "state"),
			StackNetNS: netns, UplinkHostIfName: uplink, LockDir: locks}
	}
	first := flags("first", "stack-a", "up-a")
	held, err := takeClaims(first, first.StackNetNS)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		f    *ServeFlags
		what string
	}{
		{"same stack netns", flags("second", "stack-a", "up-b"), `stack netns "stack-a"`},
		{"same uplink", flags("third", "stack-b", "up-a"), `uplink "up-a"`},
		{"same state dir", &ServeFlags{Socket: "/elsewhere.sock", StateDir: first.StateDir, StackNetNS: "stack-c", UplinkHostIfName: "up-c", LockDir: locks}, "state dir " + first.StateDir},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := takeClaims(tc.f, tc.f.StackNetNS)
			var ce *ClaimError
			if !errors.As(err, &ce) || !strings.Contains(err.Error(), tc.what) ||
				!strings.Contains(err.Error(), fmt.Sprintf("pid %d serving %s", os.Getpid(), first.Socket)) {
				t.Fatalf("err %v, want a claim error on %s naming pid %d and %s", err, tc.what, os.Getpid(), first.Socket)
			}
			// It holds nothing: its own state dir is free.
			if tc.f.StateDir != first.StateDir {
				other, err := claim(filepath.Join(tc.f.StateDir, "daemon.lock"), "x", &claimHolder{PID: 1})
				if err != nil {
					t.Fatalf("the refused daemon kept its state dir claim: %v", err)
				}
				other.Close()
			}
		})
	}
	held.Close()
	again, err := takeClaims(flags("second", "stack-a", "up-a"), "stack-a")
	if err != nil {
		t.Fatalf("claims after release: %v", err)
	}
	again.Close()
}
