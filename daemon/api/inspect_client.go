package api

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strconv"

	"github.com/containernetworking/cni/pkg/types"
)

// Links returns the stack's NICs.
func (c *Client) Links(ctx context.Context) ([]Link, error) {
	var l []Link
	if err := c.do(ctx, http.MethodGet, PathLinks, nil, &l); err != nil {
		return nil, err
	}
	return l, nil
}

// Routes returns the FIB.
func (c *Client) Routes(ctx context.Context) ([]Route, error) {
	var r []Route
	if err := c.do(ctx, http.MethodGet, PathRoutes, nil, &r); err != nil {
		return nil, err
	}
	return r, nil
}

// Neighbours returns the neighbour table.
func (c *Client) Neighbours(ctx context.Context) ([]Neighbour, error) {
	var n []Neighbour
	if err := c.do(ctx, http.MethodGet, PathNeighbours, nil, &n); err != nil {
		return nil, err
	}
	return n, nil
}

// Sockets returns the stack's sockets of proto ("tcp", "udp", "" for
// both) and the proxy's relays.
func (c *Client) Sockets(ctx context.Context, proto string) (*Sockets, error) {
	var s Sockets
	p := PathSockets
	if proto != "" {
		p += "?proto=" + url.QueryEscape(proto)
	}
	if err := c.do(ctx, http.MethodGet, p, nil, &s); err != nil {
		return nil, err
	}
	return &s, nil
}

// Conntrack returns the connection table; entries false leaves the flows
// out (conntrack -C).
func (c *Client) Conntrack(ctx context.Context, entries bool) (*Conntrack, error) {
	var ct Conntrack
	if err := c.do(ctx, http.MethodGet, PathConntrack+"?entries="+strconv.FormatBool(entries), nil, &ct); err != nil {
		return nil, err
	}
	return &ct, nil
}

// Stats returns every counter of the stack and the daemon.
func (c *Client) Stats(ctx context.Context) (*Stats, error) {
	var s Stats
	if err := c.do(ctx, http.MethodGet, PathStats, nil, &s); err != nil {
		return nil, err
	}
	return &s, nil
}

// Query is the capture request as PathCapture's query string.
func (r CaptureRequest) Query() url.Values {
	q := url.Values{}
	for _, n := range r.NICs {
		q.Add("nic", n)
	}
	for _, p := range r.Pods {
		q.Add("pod", p)
	}
	if r.Filter != "" {
		q.Set("filter", r.Filter)
	}
	if r.Count > 0 {
		q.Set("count", strconv.Itoa(r.Count))
	}
	if r.Duration > 0 {
		q.Set("duration", r.Duration.String())
	}
	if r.Snaplen > 0 {
		q.Set("snaplen", strconv.Itoa(r.Snaplen))
	}
	return q
}

// CaptureStream is a running capture: Body is the pcap stream. Once Body
// returned io.EOF, Trailer holds the capture's counters (TrailerCaptured,
// TrailerDropped, TrailerMatched). Close it to stop the capture early.
type CaptureStream struct {
	Body    io.ReadCloser
	NICs    string // HeaderCaptureNICs
	Trailer http.Header
}

// Capture starts a capture; it runs until its bounds, or until ctx ends
// or the stream is closed. The client's timeout does not apply to the
// stream: ctx bounds it.
func (c *Client) Capture(ctx context.Context, r CaptureRequest) (*CaptureStream, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://cni-userstack"+PathCapture+"?"+r.Query().Encode(), nil)
	if err != nil {
		return nil, Errorf(types.ErrInternal, "build capture request: %v", err)
	}
	hc := &http.Client{Transport: c.hc.Transport} // no overall timeout: a capture streams
	resp, err := hc.Do(req)
	if err != nil {
		e := Errorf(types.ErrTryAgainLater, "cni-userstack daemon not reachable at %s: %v", c.Socket, unwrapURL(err))
		e.Unreachable = true
		return nil, e
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, maxBody))
		var e Error
		if json.Unmarshal(b, &e) != nil || e.Code == 0 {
			return nil, Errorf(types.ErrIOFailure, "daemon at %s answered %s with HTTP %d: %.200s", c.Socket, PathCapture, resp.StatusCode, b)
		}
		return nil, &e
	}
	return &CaptureStream{Body: resp.Body, NICs: resp.Header.Get(HeaderCaptureNICs), Trailer: resp.Trailer}, nil
}
