package daemon

import (
	"log/slog"

	"golang.org/x/sys/unix"
)

// fdReserve is the descriptors the daemon needs besides its proxy flows'
// host sockets — the AF_PACKET sockets of every link, the uplink, the API
// and metrics listeners and their clients, the state directory, the Go
// runtime — with room for a node's pods.
const fdReserve = 1024

// podsAtFlowLimit is how many pods can each hold maxFlowsPerPod proxy
// flows (a host socket each) under an open-file limit of cur, after
// fdReserve; inf when the limit is unlimited.
func podsAtFlowLimit(cur uint64, maxFlowsPerPod int) (pods uint64, inf bool) {
	if cur == unix.RLIM_INFINITY {
		return 0, true
	}
	if cur <= fdReserve {
		return 0, false
	}
	return (cur - fdReserve) / uint64(maxFlowsPerPod), false
}

// checkOpenFileLimit logs the open-file limit the daemon runs with (Go's
// runtime raised the soft limit to the hard one at start) and warns when
// it leaves less than one pod's --proxy-max-flows-per-pod: every relayed
// flow holds a host socket, so flows past the limit are refused and
// counted (cni_userstack_proxy_flows_refused_total, reason
// "no_resources").
func checkOpenFileLimit(maxFlowsPerPod int, log *slog.Logger) {
	var l unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &l); err != nil {
		log.Warn("open-file limit unknown", "err", err)
		return
	}
	pods, inf := podsAtFlowLimit(l.Cur, maxFlowsPerPod)
	switch {
	case inf:
		log.Info("open-file limit", "openFileLimit", "unlimited")
	case pods < 1:
		log.Warn("the open-file limit is below one pod's proxy flow limit: proxy-mode flows past it are refused",
			"openFileLimit", l.Cur, "proxyMaxFlowsPerPod", maxFlowsPerPod,
			"fix", "raise the daemon's open-file limit (systemd LimitNOFILE=, ulimit -n) or lower --proxy-max-flows-per-pod")
	default:
		log.Info("open-file limit", "openFileLimit", l.Cur, "podsAtProxyFlowLimit", pods)
	}
}
