package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/containernetworking/cni/pkg/types"
)

// DefaultTimeout bounds one API call: attach opens a socket and writes a
// state file, a few milliseconds; a daemon that takes longer is stuck.
const DefaultTimeout = 30 * time.Second

// maxBody bounds a response body the client reads (a list of attachments
// of a full node is well under this).
const maxBody = 16 << 20

// Client talks to the daemon over its unix socket.
type Client struct {
	Socket string
	hc     *http.Client
}

// NewClient returns a client for the daemon at socket; timeout 0 is
// DefaultTimeout.
func NewClient(socket string, timeout time.Duration) *Client {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		DisableKeepAlives: true,
	}
	return &Client{Socket: socket, hc: &http.Client{Transport: tr, Timeout: timeout}}
}

// Attach asks the daemon to attach a pod's far end.
func (c *Client) Attach(ctx context.Context, req AttachRequest) (*Attachment, error) {
	var a Attachment
	if err := c.do(ctx, http.MethodPost, PathAttach, req, &a); err != nil {
		return nil, err
	}
	return &a, nil
}

// Detach removes an attachment; a missing one is success (Found false).
func (c *Client) Detach(ctx context.Context, req DetachRequest) (*DetachResponse, error) {
	var r DetachResponse
	if err := c.do(ctx, http.MethodPost, PathDetach, req, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// List returns every attachment.
func (c *Client) List(ctx context.Context) ([]Attachment, error) {
	var l []Attachment
	if err := c.do(ctx, http.MethodGet, PathAttachments, nil, &l); err != nil {
		return nil, err
	}
	return l, nil
}

// Status returns the daemon's status; it is also the readiness probe.
func (c *Client) Status(ctx context.Context) (*Status, error) {
	var s Status
	if err := c.do(ctx, http.MethodGet, PathStatus, nil, &s); err != nil {
		return nil, err
	}
	return &s, nil
}

// GC removes the attachments of a network that are not in the valid list.
func (c *Client) GC(ctx context.Context, req GCRequest) (*GCResponse, error) {
	var r GCResponse
	if err := c.do(ctx, http.MethodPost, PathGC, req, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// do runs one call. Every error it returns is an *Error: the daemon's own,
// or one the client makes with code 11 (try again later) and Unreachable
// set when the daemon cannot be reached, or code 5 (I/O) for a broken
// answer.
func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return Errorf(types.ErrInternal, "encode %s request: %v", path, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://cni-userstack"+path, body)
	if err != nil {
		return Errorf(types.ErrInternal, "build %s request: %v", path, err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		e := Errorf(types.ErrTryAgainLater, "cni-userstack daemon not reachable at %s: %v", c.Socket, unwrapURL(err))
		e.Unreachable = true
		return e
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return Errorf(types.ErrIOFailure, "read %s answer from the daemon at %s: %v", path, c.Socket, err)
	}
	if resp.StatusCode != http.StatusOK {
		var e Error
		if json.Unmarshal(b, &e) != nil || e.Code == 0 {
			return Errorf(types.ErrIOFailure, "daemon at %s answered %s with HTTP %d: %.200s", c.Socket, path, resp.StatusCode, b)
		}
		return &e
	}
	if err := json.Unmarshal(b, out); err != nil {
		return Errorf(types.ErrDecodingFailure, "decode %s answer from the daemon at %s: %v", path, c.Socket, err)
	}
	return nil
}

// unwrapURL drops net/http's "Get \"http://...\":" prefix, which names a
// URL that does not exist.
func unwrapURL(err error) error {
	var ue interface{ Unwrap() error }
	if errors.As(err, &ue) {
		if inner := ue.Unwrap(); inner != nil {
			return inner
		}
	}
	return err
}

// IsUnreachable reports whether err says the daemon could not be reached.
func IsUnreachable(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Unreachable
}

// String formats an attachment for logs.
func (a *Attachment) String() string {
	if a.IP6.IsValid() {
		return fmt.Sprintf("%s (container %s if %s, %v gw %v, %v gw %v on nic %d)", a.ID, a.ContainerID, a.IfName, a.IP, a.Gateway, a.IP6, a.Gateway6, a.NIC)
	}
	return fmt.Sprintf("%s (container %s if %s, %v gw %v on nic %d)", a.ID, a.ContainerID, a.IfName, a.IP, a.Gateway, a.NIC)
}
