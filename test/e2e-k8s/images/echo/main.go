// Command echo is the test pods' program in `make e2e-k8s` (a static
// binary in an image built locally) and the client the harness runs in
// a pod's network namespace.
//
//	echo serve [-http :8080] [-udp :9000]
//	    HTTP: /healthz answers ok; /whoami answers "NAME REMOTE-IP:PORT"
//	    (NAME from $POD_NAME or the hostname): the receiver's view of
//	    the sender. UDP: every datagram is sent back as it came.
//	echo get URL            prints the body of an HTTP GET (5 s bound)
//	echo udp ADDR SIZE      sends one SIZE-byte datagram and checks the
//	                        answer is the same SIZE bytes (5 s bound)
//	echo tcp ADDR           connects and closes (5 s bound)
package main

import (
	"bytes"
	"crypto/rand"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"
)

const bound = 5 * time.Second

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: echo serve|get|udp|tcp ...")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "serve":
		err = serve(os.Args[2:])
	case "get":
		err = get(os.Args[2:])
	case "udp":
		err = udp(os.Args[2:])
	case "tcp":
		err = dialTCP(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "echo:", err)
		os.Exit(1)
	}
}

func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	httpAddr := fs.String("http", ":8080", "HTTP listen address")
	udpAddr := fs.String("udp", ":9000", "UDP echo listen address")
	fs.Parse(args)
	name := os.Getenv("POD_NAME")
	if name == "" {
		name, _ = os.Hostname()
	}
	pc, err := net.ListenPacket("udp", *udpAddr)
	if err != nil {
		return err
	}
	go func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:n], from)
		}
	}()
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("/whoami", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintf(w, "%s %s\n", name, r.RemoteAddr) })
	fmt.Printf("echo %s: http %s udp %s\n", name, *httpAddr, *udpAddr)
	return http.ListenAndServe(*httpAddr, mux)
}

func get(args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("get URL")
	}
	c := &http.Client{Timeout: bound}
	resp, err := c.Get(args[0])
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("HTTP %d: %s", resp.StatusCode, b)
	}
	os.Stdout.Write(b)
	return nil
}

func udp(args []string) error {
	if len(args) != 2 {
		return fmt.Errorf("udp ADDR SIZE")
	}
	size, err := strconv.Atoi(args[1])
	if err != nil || size < 1 || size > 65000 {
		return fmt.Errorf("size %q", args[1])
	}
	c, err := net.DialTimeout("udp", args[0], bound)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(bound))
	msg := make([]byte, size)
	rand.Read(msg)
	// Up to three tries: the first datagram may wait on ARP.
	buf := make([]byte, 65536)
	for try := 0; try < 3; try++ {
		if _, err := c.Write(msg); err != nil {
			return err
		}
		c.SetReadDeadline(time.Now().Add(bound / 3))
		n, err := c.Read(buf)
		if err != nil {
			continue
		}
		if n != size || !bytes.Equal(buf[:n], msg) {
			return fmt.Errorf("sent %d bytes, got back %d different bytes", size, n)
		}
		fmt.Printf("udp %d bytes echoed whole by %s\n", size, args[0])
		return nil
	}
	return fmt.Errorf("no echo of a %d-byte datagram from %s in %v", size, args[0], bound)
}

func dialTCP(args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("tcp ADDR")
	}
	c, err := net.DialTimeout("tcp", args[0], bound)
	if err != nil {
		return err
	}
	fmt.Printf("tcp connected %s -> %s\n", c.LocalAddr(), c.RemoteAddr())
	return c.Close()
}
