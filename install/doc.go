// Package install owns `cni-userstack install`, the init step of the
// DaemonSet (manifests/): it copies the CNI binaries shipped in the image
// (cni-userstack and the reference host-local, loopback and portmap) into
// the host's CNI bin directory, waits for this node's pod CIDR in its Node
// object, and writes the network configuration list
// (10-cni-userstack.conflist) into the host's CNI conf directory.
//
// Not owned here: reading Node objects (daemon/kube), what the keys of the
// conflist mean (plugin, docs/config.md), the daemon it points at.
//
// # Theory of operation
//
// A container runtime may exec a plugin or read the conflist at any
// moment, so nothing is ever written in place. Each file is written to a
// temp file in the destination directory (".NAME.tmp-RANDOM": same file
// system, so the rename is atomic), fsynced, given its mode, renamed over
// the destination and the directory fsynced: a reader sees the old file or
// the new one, never a half-written binary. A file whose content is
// already the destination's is left alone (no rename, so a binary being
// executed is not replaced needlessly). Temp files left by an install
// that died midway are removed at the next run.
//
// Order: the binaries first, then the conflist. The kubelet reports the
// node's network ready once a conflist is in the conf dir, and pods start
// on it: by then every binary the conflist names is in place. While the
// Node has no pod CIDR the conflist is not written at all — the node stays
// NotReady with the reason in the init container's log — rather than a
// conflist with a wrong range.
package install
