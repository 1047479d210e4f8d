package buf

import (
	"slices"
	"strings"
)

// Layers of the drop reasons, for `cni-userstack stats` and the
// cni_userstack_drops_total metric. A layer declares the layer of its
// reasons beside them (each package's info.go, in an init function) with
// SetDropLayer; the registry is read-only once the program runs, so reading
// it takes the same lock as DropReason.String and costs nothing on a packet
// path.

// LayerUnknown is the layer of a reason no package claimed.
const LayerUnknown = "unknown"

var reasonLayer = map[DropReason]string{} // guarded by reasonMu

func init() {
	SetDropLayer("core", DropNotSpecified, DropQueueFull, DropNICDown, DropLinkError)
}

// SetDropLayer records that rs belong to layer (a short lowercase name:
// "dev", "ipv4", "tcp", ...). Kernel reasons shared by several layers
// (NO_SOCKET, PKT_TOO_SMALL) are claimed by each: their layer is the
// claimants' names sorted and joined with "+", so one label value names
// every layer that may have counted them.
func SetDropLayer(layer string, rs ...DropReason) {
	reasonMu.Lock()
	defer reasonMu.Unlock()
	for _, r := range rs {
		old, ok := reasonLayer[r]
		if !ok || old == layer {
			reasonLayer[r] = layer
			continue
		}
		names := strings.Split(old, "+")
		if !slices.Contains(names, layer) {
			names = append(names, layer)
		}
		slices.Sort(names)
		reasonLayer[r] = strings.Join(names, "+")
	}
}

// Layer is the layer that declared r (SetDropLayer), LayerUnknown when
// none did.
func (r DropReason) Layer() string {
	reasonMu.Lock()
	defer reasonMu.Unlock()
	if l, ok := reasonLayer[r]; ok {
		return l
	}
	return LayerUnknown
}

// DropReasonByName returns the registered reason called name.
func DropReasonByName(name string) (DropReason, bool) {
	reasonMu.Lock()
	defer reasonMu.Unlock()
	r, ok := reasonByKey[name]
	return r, ok
}

// DropReasons lists every registered reason in registration order.
func DropReasons() []DropReason {
	reasonMu.Lock()
	defer reasonMu.Unlock()
	out := make([]DropReason, len(reasonNames))
	for i := range out {
		out[i] = DropReason(i)
	}
	return out
}

// DropLayerOf is the layer of the reason called name, LayerUnknown for a
// name no layer registered.
func DropLayerOf(name string) string {
	r, ok := DropReasonByName(name)
	if !ok {
		return LayerUnknown
	}
	return r.Layer()
}
