// benchtool: the small load tools and targets bench/run uses, in one binary (Go standard library
// plus Debian's golang.org/x/crypto/ssh, so it builds offline):
//
//	benchtool echo -listen 127.0.0.1:7000          TCP echo target (TCP_NODELAY)
//	benchtool http -listen 127.0.0.1:8080          answers every request "200 ok" and closes (wrk's target)
//	benchtool rtt -addr HOST:PORT -n N -size 64    round trips of SIZE bytes on one connection → one JSON line
//	benchtool gateways -relay HOST:PORT -n N …     N gateways' SSH side (user certificates), reconnecting
//	                                               with full-jitter backoff; reports herd and storm figures
//
// Build: GO111MODULE=off GOPATH=/usr/share/gocode go build -o benchtool .
package main

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: benchtool echo|http|rtt|gateways [flags]")
		os.Exit(2)
	}
	args := os.Args[2:]
	switch os.Args[1] {
	case "echo":
		echo(args)
	case "http":
		httpTarget(args)
	case "rtt":
		rtt(args)
	case "gateways":
		gateways(args)
	default:
		fmt.Fprintln(os.Stderr, "unknown command", os.Args[1])
		os.Exit(2)
	}
}

var outMu sync.Mutex

// emit writes one line with one write(2).
func emit(format string, a ...interface{}) {
	outMu.Lock()
	os.Stdout.Write([]byte(fmt.Sprintf(format, a...) + "\n"))
	outMu.Unlock()
}

func listen(addr string) net.Listener {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		emit("ERROR listen %v", err)
		os.Exit(1)
	}
	emit("READY %s", l.Addr())
	return l
}

// ---------------------------------------------------------------------------------------------
// Targets

func echo(args []string) {
	fs := flag.NewFlagSet("echo", flag.ExitOnError)
	addr := fs.String("listen", "127.0.0.1:7000", "address")
	fs.Parse(args)
	l := listen(*addr)
	for {
		c, err := l.Accept()
		if err != nil {
			continue
		}
		go func(c net.Conn) {
			defer c.Close()
			c.(*net.TCPConn).SetNoDelay(true)
			buf := make([]byte, 64*1024)
			for {
				n, err := c.Read(buf)
				if n > 0 {
					if _, werr := c.Write(buf[:n]); werr != nil {
						return
					}
				}
				if err != nil {
					return
				}
			}
		}(c)
	}
}

var httpResponse = []byte("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")

func httpTarget(args []string) {
	fs := flag.NewFlagSet("http", flag.ExitOnError)
	addr := fs.String("listen", "127.0.0.1:8080", "address")
	fs.Parse(args)
	l := listen(*addr)
	for {
		c, err := l.Accept()
		if err != nil {
			continue
		}
		go func(c net.Conn) {
			defer c.Close()
			c.(*net.TCPConn).SetNoDelay(true)
			c.SetDeadline(time.Now().Add(30 * time.Second))
			buf := make([]byte, 8192)
			have := 0
			for {
				n, err := c.Read(buf[have:])
				have += n
				if strings.Contains(string(buf[:have]), "\r\n\r\n") {
					c.Write(httpResponse)
					return
				}
				if err != nil || have == len(buf) {
					return
				}
			}
		}(c)
	}
}

// ---------------------------------------------------------------------------------------------
// Round trips on one connection, with blocking system calls (no scheduler in the timed path).

func rtt(args []string) {
	fs := flag.NewFlagSet("rtt", flag.ExitOnError)
	addr := fs.String("addr", "127.0.0.1:7000", "HOST:PORT of an echo service")
	n := fs.Int("n", 5000, "timed round trips")
	warm := fs.Int("warmup", 200, "untimed round trips first")
	size := fs.Int("size", 64, "message size")
	fs.Parse(args)
	host, portText, _ := net.SplitHostPort(*addr)
	var port int
	fmt.Sscan(portText, &port)
	ip := net.ParseIP(host).To4()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		fail("socket: %v", err)
	}
	syscall.SetsockoptInt(fd, syscall.IPPROTO_TCP, syscall.TCP_NODELAY, 1)
	sa := &syscall.SockaddrInet4{Port: port}
	copy(sa.Addr[:], ip)
	if err := syscall.Connect(fd, sa); err != nil {
		fail("connect %s: %v", *addr, err)
	}
	msg := make([]byte, *size)
	for i := range msg {
		msg[i] = byte('a' + i%26)
	}
	buf := make([]byte, 65536)
	xs := make([]float64, 0, *n)
	for i := 0; i < *n+*warm; i++ {
		t := time.Now()
		if _, err := syscall.Write(fd, msg); err != nil {
			fail("write: %v", err)
		}
		got := 0
		for got < *size {
			k, err := syscall.Read(fd, buf)
			if err != nil || k <= 0 {
				fail("read: %v (after %d round trips)", err, i)
			}
			got += k
		}
		if i >= *warm {
			xs = append(xs, float64(time.Since(t).Nanoseconds())/1000)
		}
	}
	syscall.Close(fd)
	sort.Float64s(xs)
	pct := func(p float64) float64 { return xs[min(len(xs)-1, int(float64(len(xs))*p))] }
	out, _ := json.Marshal(map[string]interface{}{
		"n": len(xs), "size": *size, "p50_us": pct(0.50), "p90_us": pct(0.90), "p99_us": pct(0.99), "max_us": xs[len(xs)-1],
	})
	emit("%s", out)
}

func min(a, b int) int {
	if a < b {
		return a
	}
	return b
}

func fail(format string, a ...interface{}) {
	emit("ERROR "+format, a...)
	os.Exit(1)
}

// ---------------------------------------------------------------------------------------------
// Gateways: the SSH side of N gateways against one relay.
//
// Each gateway has its own id and an OpenSSH user certificate signed here with the relay's user
// CA (key id client-<relay>, principals [id, id]); it dials from a spread of 127.0.0.x source
// addresses, authenticates, refuses channels, answers global requests and sends
// keepalive@openssh.com. When the connection ends or an attempt fails it waits a full-jitter
// delay, uniform in [0, min(cap, base·2^failures)), exactly as GatewayTunnelMachine does
// (failures reset after a connection that lived stablePeriod), then tries again.
//
// Output: READY (certificates made), UP lines every -status, ALLUP when every gateway is up, and
// after a mass disconnection (the relay restarted) a STORM line with JSON: time until all were
// back, attempts, and a histogram of attempt start times in 1 s buckets from the first disconnect.

type herd struct {
	n          int
	up         atomic.Int64
	attempts   atomic.Int64
	failed     atomic.Int64
	mu         sync.Mutex
	steady     bool      // every gateway was up, no storm in progress
	stormStart time.Time // first disconnect of the current storm
	storm      bool
	stormTries []float64 // attempt start times (s since stormStart)
	stormFails int
	perGateway map[int]int // attempts per gateway during the storm
	lastErr    atomic.Value
}

func gateways(args []string) {
	fs := flag.NewFlagSet("gateways", flag.ExitOnError)
	relay := fs.String("relay", "127.0.0.1:2222", "relay SSH address")
	n := fs.Int("n", 100, "gateways")
	caFile := fs.String("ca", "", "relay SSH user CA private key (OpenSSH format)")
	relayName := fs.String("relay-name", "bench-relay", "relay name (certificate key id client-<name>)")
	prefix := fs.String("id-prefix", "bench-load-", "gateway id prefix")
	sources := fs.Int("sources", 200, "spread source addresses over 127.0.0.2 … 127.0.0.(1+sources)")
	algos := fs.String("algorithms", "infisical", "infisical (the gateway's set: DH group14, aes-ctr, hmac-sha2) or default (x/crypto's)")
	keyType := fs.String("key-type", "ed25519", "gateway key: ed25519 or rsa")
	base := fs.Duration("backoff-base", time.Second, "first backoff window")
	capD := fs.Duration("backoff-cap", 30*time.Second, "largest backoff window")
	stable := fs.Duration("stable", 60*time.Second, "uptime after which failures reset")
	keepalive := fs.Duration("keepalive", 30*time.Second, "keepalive@openssh.com interval (0: none)")
	startRate := fs.Int("start-rate", 2000, "first connections started per second (the initial bring-up is not measured)")
	status := fs.Duration("status", time.Second, "UP line interval")
	timeout := fs.Duration("timeout", 30*time.Second, "dial + handshake timeout")
	fs.Parse(args)

	caPEM, err := os.ReadFile(*caFile)
	if err != nil {
		fail("read CA: %v", err)
	}
	caSigner, err := ssh.ParsePrivateKey(caPEM)
	if err != nil {
		fail("parse CA: %v", err)
	}
	var base0 ssh.Signer
	switch *keyType {
	case "rsa":
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			fail("rsa: %v", err)
		}
		base0, _ = ssh.NewSignerFromKey(k)
	default:
		_, k, _ := ed25519.GenerateKey(rand.Reader)
		base0, _ = ssh.NewSignerFromKey(k)
	}
	now := uint64(time.Now().Unix())
	configs := make([]*ssh.ClientConfig, *n)
	for i := 0; i < *n; i++ {
		id := fmt.Sprintf("%s%05d", *prefix, i)
		cert := &ssh.Certificate{
			Key: base0.PublicKey(), Serial: uint64(i + 1), CertType: ssh.UserCert, KeyId: "client-" + *relayName,
			ValidPrincipals: []string{id, id}, ValidAfter: now - 300, ValidBefore: now + 30*86400,
			Permissions: ssh.Permissions{Extensions: map[string]string{"permit-port-forwarding": ""}},
		}
		if err := cert.SignCert(rand.Reader, caSigner); err != nil {
			fail("sign: %v", err)
		}
		cs, err := ssh.NewCertSigner(cert, base0)
		if err != nil {
			fail("cert signer: %v", err)
		}
		cfg := &ssh.ClientConfig{User: id, Auth: []ssh.AuthMethod{ssh.PublicKeys(cs)},
			HostKeyCallback: ssh.InsecureIgnoreHostKey(), Timeout: *timeout}
		if *algos == "infisical" {
			cfg.KeyExchanges = []string{"diffie-hellman-group14-sha256", "diffie-hellman-group16-sha512", "diffie-hellman-group18-sha512"}
			cfg.Ciphers = []string{"aes128-ctr", "aes192-ctr", "aes256-ctr"}
			cfg.MACs = []string{"hmac-sha2-256", "hmac-sha2-512"}
		}
		configs[i] = cfg
	}
	h := &herd{n: *n}
	emit("READY gateways=%d algorithms=%s key=%s sources=%d backoff=%v..%v", *n, *algos, *keyType, *sources, *base, *capD)
	start := time.Now()
	go func() {
		for range time.Tick(*status) {
			le, _ := h.lastErr.Load().(string)
			emit("UP n=%d of=%d attempts=%d failed=%d t=%.1f last-error=%q", h.up.Load(), h.n, h.attempts.Load(), h.failed.Load(),
				time.Since(start).Seconds(), le)
		}
	}()
	interval := time.Second / time.Duration(max(1, *startRate))
	for i := 0; i < *n; i++ {
		src := net.IPv4(127, 0, 0, byte(2+i%max(1, min(*sources, 250))))
		g := &gw{h: h, idx: i, cfg: configs[i], relay: *relay, src: src, base: *base, cap: *capD, stable: *stable,
			keepalive: *keepalive, timeout: *timeout}
		go g.run()
		time.Sleep(interval)
	}
	select {}
}

func max(a, b int) int {
	if a > b {
		return a
	}
	return b
}

type gw struct {
	h                      *herd
	idx                    int
	cfg                    *ssh.ClientConfig
	relay                  string
	src                    net.IP
	base, cap, stable      time.Duration
	keepalive, timeout     time.Duration
	failures               int
}

// window is GatewayTunnelMachine.backoffWindow: min(cap, base·2^failures).
func (g *gw) window() time.Duration {
	w := g.base
	if w > g.cap {
		w = g.cap
	}
	for k := 0; k < g.failures && w < g.cap; k++ {
		if w > g.cap/2 {
			w = g.cap
		} else {
			w *= 2
		}
	}
	return w
}

func (g *gw) backoff() {
	w := g.window()
	g.failures++
	if w <= 0 {
		return
	}
	d, _ := rand.Int(rand.Reader, big.NewInt(int64(w/time.Millisecond)))
	time.Sleep(time.Duration(d.Int64()) * time.Millisecond)
}

func (g *gw) run() {
	h := g.h
	for {
		h.noteAttempt(g.idx)
		client, err := g.connect()
		if err != nil {
			h.failed.Add(1)
			h.lastErr.Store(err.Error())
			h.noteFailure()
			g.backoff()
			continue
		}
		since := time.Now()
		h.connected()
		stop := make(chan struct{})
		if g.keepalive > 0 {
			go func() {
				t := time.NewTicker(g.keepalive)
				defer t.Stop()
				for {
					select {
					case <-stop:
						return
					case <-t.C:
						client.SendRequest("keepalive@openssh.com", true, nil)
					}
				}
			}()
		}
		client.Wait()
		close(stop)
		h.disconnected()
		if time.Since(since) >= g.stable {
			g.failures = 0
		}
		g.backoff()
	}
}

func (g *gw) connect() (ssh.Conn, error) {
	d := net.Dialer{Timeout: g.timeout, LocalAddr: &net.TCPAddr{IP: g.src}}
	c, err := d.Dial("tcp", g.relay)
	if err != nil {
		return nil, err
	}
	c.(*net.TCPConn).SetNoDelay(true)
	c.SetDeadline(time.Now().Add(g.timeout))
	conn, chans, reqs, err := ssh.NewClientConn(c, g.relay, g.cfg)
	if err != nil {
		c.Close()
		return nil, err
	}
	c.SetDeadline(time.Time{})
	go ssh.DiscardRequests(reqs)
	go func() {
		for nc := range chans {
			nc.Reject(ssh.Prohibited, "load generator: no channels")
		}
	}()
	return conn, nil
}

func (h *herd) noteAttempt(idx int) {
	h.attempts.Add(1)
	h.mu.Lock()
	if h.storm {
		h.stormTries = append(h.stormTries, time.Since(h.stormStart).Seconds())
		h.perGateway[idx]++
	}
	h.mu.Unlock()
}

func (h *herd) noteFailure() {
	h.mu.Lock()
	if h.storm {
		h.stormFails++
	}
	h.mu.Unlock()
}

func (h *herd) connected() {
	up := h.up.Add(1)
	if int(up) != h.n {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.storm {
		allBack := time.Since(h.stormStart).Seconds()
		hist := make([]int, int(allBack)+1)
		for _, t := range h.stormTries {
			b := int(t)
			if b >= len(hist) {
				b = len(hist) - 1
			}
			hist[b]++
		}
		most := 0
		for _, k := range h.perGateway {
			if k > most {
				most = k
			}
		}
		sort.Float64s(h.stormTries)
		first, last := 0.0, 0.0
		if len(h.stormTries) > 0 {
			first, last = h.stormTries[0], h.stormTries[len(h.stormTries)-1]
		}
		out, _ := json.Marshal(map[string]interface{}{
			"gateways": h.n, "all_back_s": allBack, "attempts": len(h.stormTries), "failed_attempts": h.stormFails,
			"max_attempts_per_gateway": most, "first_attempt_s": first, "last_attempt_s": last, "histogram_1s": hist,
		})
		emit("STORM %s", out)
		h.storm = false
	} else {
		emit("ALLUP n=%d", h.n)
	}
	h.steady = true
}

func (h *herd) disconnected() {
	h.up.Add(-1)
	h.mu.Lock()
	if h.steady && !h.storm {
		h.steady = false
		h.storm = true
		h.stormStart = time.Now()
		h.stormTries = h.stormTries[:0]
		h.stormFails = 0
		h.perGateway = map[int]int{}
	}
	h.mu.Unlock()
}

var _ = io.EOF
