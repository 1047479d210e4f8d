package daemon

import (
	"io"
	"log/slog"
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

// TestRulesOverAttacherNetfilter: the attacher enables netfilter when it
// is built (the divert rule needs conntrack); `serve --rules` loads its
// ruleset into that same engine.
func TestRulesOverAttacherNetfilter(t *testing.T) {
	a := newStackAttacher(StackConfig{StackNetNS: "test", UplinkSubnet: DefaultUplinkSubnet, UplinkHostIfName: "up", Logger: discardLogger()}, newPipeKernel())
	t.Cleanup(func() { a.Close() })
	if a.Netfilter() == nil || a.Stack().Netfilter() != a.Netfilter() {
		t.Fatalf("attacher's netfilter %p, stack's %p", a.Netfilter(), a.Stack().Netfilter())
	}
	path := filepath.Join(t.TempDir(), "r.rules")
	os.WriteFile(path, []byte("*filter\n-A FORWARD -p udp --dport 53 -j ACCEPT\nCOMMIT\n"), 0o600)
	rs, err := loadRules(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Netfilter().Load(rs); err != nil {
		t.Fatal(err)
	}
	if n := len(a.Netfilter().Ruleset().Chain("filter", "FORWARD").Rules); n != 1 {
		t.Fatalf("FORWARD has %d rules after Load", n)
	}
}

func TestServeFlagsKubernetes(t *testing.T) {
	t.Setenv(NodeNameEnv, "")
	if _, err := ParseServeFlags([]string{"--kubernetes"}, io.Discard); err == nil || !strings.Contains(err.Error(), "--node-name") {
		t.Fatalf("no node name: %v", err)
	}
	if _, err := ParseServeFlags([]string{"--kubeconfig", "/k"}, io.Discard); err == nil || !strings.Contains(err.Error(), "need --kubernetes") {
		t.Fatalf("kubeconfig alone: %v", err)
	}
	t.Setenv(NodeNameEnv, "node-a")
	f, err := ParseServeFlags([]string{"--kubernetes", "--kubeconfig", "/k"}, io.Discard)
	if err != nil || f.NodeName != "node-a" || f.Kubeconfig != "/k" || !f.Kubernetes {
		t.Fatalf("from env: %+v %v", f, err)
	}
	f, err = ParseServeFlags([]string{"--kubernetes", "--node-name", "node-b"}, io.Discard)
	if err != nil || f.NodeName != "node-b" {
		t.Fatalf("flag beats env: %+v %v", f, err)
	}
}

func TestEnsureIPForward(t *testing.T) {
	var logs strings.Builder
	log := slog.New(slog.NewTextHandler(&logs, nil))
	p := filepath.Join(t.TempDir(), "ip_forward")
	os.WriteFile(p, []byte("0\n"), 0o644)
	if err := ensureForward(p, "IPv4", log); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(p); string(b) != "1\n" || !strings.Contains(logs.String(), "turned host IPv4 forwarding on") {
		t.Fatalf("file %q, log %q", b, logs.String())
	}
	logs.Reset()
	if err := ensureForward(p, "IPv4", log); err != nil || logs.Len() != 0 {
		t.Fatalf("already on: %v %q", err, logs.String())
	}
	if err := ensureForward(filepath.Join(t.TempDir(), "missing"), "IPv4", log); err == nil {
		t.Fatal("missing sysctl must fail")
	}
}
