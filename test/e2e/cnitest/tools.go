//go:build tools

// This file keeps the reference CNI plugins that BuildPlugins compiles
// (ReferencePlugins) in go.mod and go.sum: `go mod tidy` sees these
// imports, the build never does.
package cnitest

import (
	_ "github.com/containernetworking/plugins/plugins/ipam/host-local"
	_ "github.com/containernetworking/plugins/plugins/main/loopback"
	_ "github.com/containernetworking/plugins/plugins/main/ptp"
	_ "github.com/containernetworking/plugins/plugins/meta/bandwidth"
	_ "github.com/containernetworking/plugins/plugins/meta/portmap"
	_ "github.com/containernetworking/plugins/plugins/meta/tuning"
)
