package plugin

import (
	"errors"
	"testing"

	"github.com/cni-userstack/cni-userstack/daemon/api"
	"github.com/containernetworking/cni/pkg/types"
)

// FuzzLoadConf: any stdin gives a config or a *types.Error with a spec
// code, never a panic.
func FuzzLoadConf(f *testing.F) {
	for _, s := range []string{
		string(conf(nil)),
		`{"cniVersion":"1.1.0","name":"n","type":"cni-userstack","ipam":{"type":"host-local"},"mtu":70000}`,
		`{"cniVersion":"1.1.0","name":"n","type":"cni-userstack","ipam":{"type":"x"},"uplink":{"subnet":"169.254.1.0/30","x":1}}`,
		`{"cniVersion":"1.1.0","name":"n","type":"cni-userstack","ipam":{"type":"x"},"prevResult":{"cniVersion":"1.1.0","ips":[{"address":"10.0.0.2/24"}]}}`,
		`{"cniVersion":"0.4.0","name":"n","type":"cni-userstack","ipam":{"type":"x"},"prevResult":{"ips":[{"version":"4","address":"10.0.0.2/24"}]}}`,
		`{"type":"cni-userstack","uplink":null}`,
		`{"cniVersion":"1.1.0","name":"n","type":"cni-userstack","ipam":{"type":"x"},"mode":"route","routedRanges":["10.244.0.0/16"]}`,
		`{"cniVersion":"1.1.0","name":"n","type":"cni-userstack","ipam":{"type":"x"},"runtimeConfig":{"portMappings":[{"hostPort":80,"containerPort":8080,"protocol":"UDP","hostIP":"0.0.0.0"}]}}`,
		`[]`, `null`, `{`, ``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := LoadConf(b)
		if err != nil {
			var te *types.Error
			if !errors.As(err, &te) || te.Code == 0 || te.Code == types.ErrInternal {
				t.Fatalf("error %v (%T) is not a coded *types.Error", err, err)
			}
			return
		}
		if c.MTU < MinMTU || c.MTU > MaxMTU || c.IPAM.Type == "" || c.Uplink == nil || !c.UplinkSubnet().IsValid() ||
			(c.Mode != "proxy" && c.Mode != "route") || api.CheckRoutedRanges(c.Routed()) != nil {
			t.Fatalf("accepted an invalid config: %+v", c)
		}
		if pm, err := c.PortMappings(); err != nil {
			var te *types.Error
			if !errors.As(err, &te) || te.Code != types.ErrInvalidNetworkConfig {
				t.Fatalf("port mapping error %v is not code 7", err)
			}
		} else if _, err := api.NormalizePortMappings(pm); err != nil {
			t.Fatalf("normalised port mappings do not check: %v", err)
		}
	})
}
