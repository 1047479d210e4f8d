package daemon

import (
	"strings"
	"testing"
	"time"
)

// TestKeepAliveFlags: the relay keepalive flags default to the kernel's
// sysctls and take what the kernel's socket options take (whole seconds
// up to 32767, 1..127 probes); idle 0 turns keepalive off, which the
// engine's config says with a negative idle.
func TestKeepAliveFlags(t *testing.T) {
	tests := []struct {
		args           []string
		idle, interval time.Duration
		count          int
		engineIdle     time.Duration
		err            string
	}{
		{nil, 2 * time.Hour, 75 * time.Second, 9, 2 * time.Hour, ""},
		{[]string{"--proxy-keepalive-idle=3s", "--proxy-keepalive-interval=1s", "--proxy-keepalive-count=2"}, 3 * time.Second, time.Second, 2, 3 * time.Second, ""},
		{[]string{"--proxy-keepalive-idle=0"}, 0, 75 * time.Second, 9, -1, ""},
		{[]string{"--proxy-keepalive-idle=1500ms"}, 0, 0, 0, 0, "--proxy-keepalive-idle 1.5s"},
		{[]string{"--proxy-keepalive-idle=-1s"}, 0, 0, 0, 0, "--proxy-keepalive-idle"},
		{[]string{"--proxy-keepalive-idle=32768s"}, 0, 0, 0, 0, "--proxy-keepalive-idle"},
		{[]string{"--proxy-keepalive-interval=0"}, 0, 0, 0, 0, "--proxy-keepalive-interval"},
		{[]string{"--proxy-keepalive-count=0"}, 0, 0, 0, 0, "--proxy-keepalive-count 0"},
		{[]string{"--proxy-keepalive-count=128"}, 0, 0, 0, 0, "--proxy-keepalive-count 128"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			f, err := ParseServeFlags(tt.args, &strings.Builder{})
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil || f.ProxyKeepAliveIdle != tt.idle || f.ProxyKeepAliveInterval != tt.interval || f.ProxyKeepAliveCount != tt.count {
				t.Fatalf("flags %+v %v", f, err)
			}
			if c := engineConfig(nil, f, nil); c.KeepAliveIdle != tt.engineIdle || c.KeepAliveInterval != tt.interval || c.KeepAliveCount != tt.count {
				t.Fatalf("engine config keepalive %v %v %d", c.KeepAliveIdle, c.KeepAliveInterval, c.KeepAliveCount)
			}
		})
	}
}
