package daemon

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoadRules(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.rules")
	bad := filepath.Join(dir, "bad.rules")
	os.WriteFile(good, []byte("*filter\n-A FORWARD -p udp --dport 53 -j ACCEPT\nCOMMIT\n"), 0o600)
	os.WriteFile(bad, []byte("*filter\n-A FORWARD -p udp --dprt 53 -j ACCEPT\nCOMMIT\n"), 0o600)

	if rs, err := loadRules(""); rs != nil || err != nil {
		t.Fatalf("no file: %v %v", rs, err)
	}
	rs, err := loadRules(good)
	if err != nil || len(rs.Chain("filter", "FORWARD").Rules) != 1 {
		t.Fatalf("good file: %v", err)
	}
	// A person must be able to find the mistake: file, line and column.
	_, err = loadRules(bad)
	if err == nil || !strings.Contains(err.Error(), bad) || !strings.Contains(err.Error(), "line 2, column") || !strings.Contains(err.Error(), "--dprt") {
		t.Fatalf("bad file: %v", err)
	}
	if _, err := loadRules(filepath.Join(dir, "missing")); err == nil {
		t.Fatal("missing file must fail")
	}
	f, err := ParseServeFlags([]string{"--rules", good}, io.Discard)
	if err != nil || f.Rules != good {
		t.Fatalf("flag: %+v %v", f, err)
	}
}
