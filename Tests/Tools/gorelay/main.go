// gorelay plays the relay toward a gateway, for the gateway's refusal tests
// (Tests/RelayRuntimeTests/GatewayChannelRefusalTests.swift). It is an SSH *server* built on
// Debian's golang.org/x/crypto/ssh (0.4.0): it presents a host certificate, accepts a user
// certificate signed by -user-ca, and then, on the first connection, sends the global requests
// named by -global and opens the channels named by -open, printing each answer as one JSON
// object per line on stdout. It never carries data.
//
// Builds offline:
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o gorelay main.go
package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"
)

var outMu sync.Mutex

// emit prints one JSON object per line.
func emit(fields map[string]interface{}) {
	b, _ := json.Marshal(fields)
	outMu.Lock()
	os.Stdout.Write(append(b, '\n'))
	outMu.Unlock()
}

func fail(err error) {
	emit(map[string]interface{}{"event": "error", "error": err.Error()})
	os.Exit(1)
}

func sshString(s string) []byte {
	b := make([]byte, 4+len(s))
	binary.BigEndian.PutUint32(b, uint32(len(s)))
	copy(b[4:], s)
	return b
}

func u32(v uint32) []byte {
	b := make([]byte, 4)
	binary.BigEndian.PutUint32(b, v)
	return b
}

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// hostile is a channel type no implementation knows: control characters, an escape sequence,
// a newline and a forged log line, padded to 10 KiB.
func hostile() string {
	head := "evil\x1b[31m\r\n\x00level=error msg=\"forged\"\x07"
	return head + strings.Repeat("A", 10*1024-len(head))
}

// A channel to open: its wire type and payload, by name.
type opening struct {
	wire    string
	payload []byte
}

func channelByName(name string) (opening, error) {
	direct := cat(sshString("127.0.0.1"), u32(443), sshString("127.0.0.1"), u32(40000))
	switch name {
	case "session":
		return opening{"session", nil}, nil
	case "x11":
		return opening{"x11", cat(sshString("127.0.0.1"), u32(6010))}, nil
	case "x11-bogus":
		return opening{"x11", []byte("\xff\xff")}, nil
	case "forwarded-tcpip":
		return opening{"forwarded-tcpip", cat(sshString("127.0.0.1"), u32(80), sshString("127.0.0.1"), u32(40000))}, nil
	case "forwarded-tcpip-hostile":
		// Peer text in the fields a refusal might log: control characters, 10 KiB.
		return opening{"forwarded-tcpip", cat(sshString(hostile()), u32(80), sshString(hostile()), u32(40000))}, nil
	case "auth-agent@openssh.com":
		return opening{"auth-agent@openssh.com", nil}, nil
	case "direct-streamlocal@openssh.com":
		return opening{"direct-streamlocal@openssh.com", cat(sshString("/run/sshd.sock"), sshString(""), u32(0))}, nil
	case "unknown-type@relay-test":
		return opening{"unknown-type@relay-test", []byte("x")}, nil
	case "hostile":
		return opening{hostile(), []byte("x")}, nil
	case "direct-tcpip-bogus":
		// A length field that runs past the end of the message.
		return opening{"direct-tcpip", []byte("\x00\x00\xff\xffbogus")}, nil
	case "direct-tcpip":
		return opening{"direct-tcpip", direct}, nil
	case "direct-tcpip-empty":
		// What Infisical's relay sends: OpenChannel("direct-tcpip", nil), no type-specific data.
		return opening{"direct-tcpip", nil}, nil
	}
	return opening{}, fmt.Errorf("unknown channel name %q", name)
}

func globalByName(name string) (string, []byte, error) {
	switch name {
	case "tcpip-forward":
		return "tcpip-forward", cat(sshString("127.0.0.1"), u32(2222)), nil
	case "cancel-tcpip-forward":
		return "cancel-tcpip-forward", cat(sshString("127.0.0.1"), u32(2222)), nil
	case "unknown@relay-test":
		return "unknown@relay-test", []byte("anything"), nil
	case "keepalive@openssh.com":
		return "keepalive@openssh.com", nil, nil
	}
	return "", nil, fmt.Errorf("unknown global request %q", name)
}

func reasonName(r ssh.RejectionReason) string {
	switch r {
	case ssh.Prohibited:
		return "SSH_OPEN_ADMINISTRATIVELY_PROHIBITED"
	case ssh.ConnectionFailed:
		return "SSH_OPEN_CONNECT_FAILED"
	case ssh.UnknownChannelType:
		return "SSH_OPEN_UNKNOWN_CHANNEL_TYPE"
	case ssh.ResourceShortage:
		return "SSH_OPEN_RESOURCE_SHORTAGE"
	}
	return fmt.Sprintf("reason-%d", uint32(r))
}

func list(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}

func readSigner(keyFile, certFile string) (ssh.Signer, error) {
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, err
	}
	signer, err := ssh.ParsePrivateKey(keyPEM)
	if err != nil {
		return nil, err
	}
	data, err := os.ReadFile(certFile)
	if err != nil {
		return nil, err
	}
	pub, _, _, _, err := ssh.ParseAuthorizedKey(data)
	if err != nil {
		return nil, err
	}
	cert, ok := pub.(*ssh.Certificate)
	if !ok {
		return nil, errors.New("-host-cert is not a certificate")
	}
	return ssh.NewCertSigner(cert, signer)
}

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on")
	hostKey := flag.String("host-key", "", "host private key")
	hostCert := flag.String("host-cert", "", "host certificate for -host-key; read when the first connection arrives, so it can name the bound port")
	userCA := flag.String("user-ca", "", "the CA public key that signs gateway user certificates")
	open := flag.String("open", "", "channels to open, in order, comma-separated")
	global := flag.String("global", "", "global requests to send (want-reply) before the channels, comma-separated")
	hold := flag.Duration("hold", 2*time.Second, "after the last channel, how long to keep the connection and watch that it stays up")
	answerTimeout := flag.Duration("answer-timeout", 3*time.Second, "how long to wait for the answer to each channel open")
	exitOnEOF := flag.Bool("exit-on-stdin-eof", false, "exit when stdin reaches EOF")
	flag.Parse()
	if *hostKey == "" || *hostCert == "" || *userCA == "" {
		fmt.Fprintln(os.Stderr, "usage: -host-key, -host-cert and -user-ca are required")
		os.Exit(2)
	}
	caData, err := os.ReadFile(*userCA)
	if err != nil {
		fail(err)
	}
	ca, _, _, _, err := ssh.ParseAuthorizedKey(caData)
	if err != nil {
		fail(err)
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fail(err)
	}
	emit(map[string]interface{}{"event": "listening", "port": ln.Addr().(*net.TCPAddr).Port})

	stop := make(chan struct{})
	var once sync.Once
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	go func() { <-sigs; once.Do(func() { close(stop) }) }()
	if *exitOnEOF {
		go func() { io.Copy(io.Discard, os.Stdin); once.Do(func() { close(stop) }) }()
	}
	go func() { <-stop; ln.Close(); os.Exit(0) }()

	signerOnce := sync.Once{}
	var signer ssh.Signer
	var signerErr error
	checker := &ssh.CertChecker{
		IsUserAuthority: func(auth ssh.PublicKey) bool { return bytes.Equal(auth.Marshal(), ca.Marshal()) },
	}
	var conn *ssh.ServerConn
	var chans <-chan ssh.NewChannel
	var reqs <-chan *ssh.Request
	// Connections that fail their handshake are reported and the next one is accepted; the
	// script runs on the first that authenticates.
	for {
		tcp, err := ln.Accept()
		if err != nil {
			fail(err)
		}
		signerOnce.Do(func() { signer, signerErr = readSigner(*hostKey, *hostCert) })
		if signerErr != nil {
			fail(signerErr)
		}
		cfg := &ssh.ServerConfig{
			PublicKeyCallback: func(meta ssh.ConnMetadata, key ssh.PublicKey) (*ssh.Permissions, error) {
				cert, ok := key.(*ssh.Certificate)
				if !ok {
					return nil, errors.New("a user certificate is required")
				}
				if err := checker.CheckCert(meta.User(), cert); err != nil {
					return nil, err
				}
				if !checker.IsUserAuthority(cert.SignatureKey) {
					return nil, errors.New("certificate signed by an unknown authority")
				}
				return &ssh.Permissions{Extensions: map[string]string{"key-id": cert.KeyId}}, nil
			},
		}
		cfg.AddHostKey(signer)
		conn, chans, reqs, err = ssh.NewServerConn(tcp, cfg)
		if err == nil {
			break
		}
		emit(map[string]interface{}{"event": "handshake-failed", "peer": tcp.RemoteAddr().String(), "error": err.Error()})
		tcp.Close()
	}
	go func() {
		for {
			extra, err := ln.Accept()
			if err != nil {
				return
			}
			emit(map[string]interface{}{"event": "extra-connection", "peer": extra.RemoteAddr().String()})
			extra.Close()
		}
	}()
	emit(map[string]interface{}{"event": "authenticated", "user": conn.User(), "keyId": conn.Permissions.Extensions["key-id"]})
	go ssh.DiscardRequests(reqs)
	go func() {
		for nc := range chans {
			nc.Reject(ssh.Prohibited, "the relay opens channels, it does not accept them")
		}
	}()
	closed := make(chan error, 1)
	go func() { closed <- conn.Wait() }()

	for _, name := range list(*global) {
		wire, payload, err := globalByName(name)
		if err != nil {
			fail(err)
		}
		ok, _, err := conn.SendRequest(wire, true, payload)
		e := map[string]interface{}{"event": "global", "name": name, "ok": ok}
		if err != nil {
			e["error"] = err.Error()
		}
		emit(e)
	}
	for _, name := range list(*open) {
		o, err := channelByName(name)
		if err != nil {
			fail(err)
		}
		e := map[string]interface{}{"event": "open", "name": name, "typeLength": len(o.wire)}
		type answer struct {
			ch    ssh.Channel
			creqs <-chan *ssh.Request
			err   error
		}
		answered := make(chan answer, 1)
		go func() {
			ch, creqs, err := conn.OpenChannel(o.wire, o.payload)
			answered <- answer{ch, creqs, err}
		}()
		select {
		case a := <-answered:
			var oce *ssh.OpenChannelError
			switch {
			case a.err == nil:
				e["accepted"] = true
				go ssh.DiscardRequests(a.creqs)
				a.ch.Close()
			case errors.As(a.err, &oce):
				e["accepted"] = false
				e["reason"] = uint32(oce.Reason)
				e["reasonName"] = reasonName(oce.Reason)
				e["message"] = oce.Message
			default:
				e["accepted"] = false
				e["error"] = a.err.Error()
			}
		case <-time.After(*answerTimeout):
			// RFC 4254 §5.1 wants a confirmation or a failure; the open stays pending here.
			e["accepted"] = false
			e["unanswered"] = true
		}
		emit(e)
	}
	// The connection must stay up: a keepalive round trip proves the peer still answers.
	select {
	case err := <-closed:
		emit(map[string]interface{}{"event": "disconnected", "error": fmt.Sprint(err)})
		return
	case <-time.After(*hold):
	}
	ok, _, err := conn.SendRequest("keepalive@openssh.com", true, nil)
	e := map[string]interface{}{"event": "done", "keepaliveAnswered": err == nil, "keepaliveOk": ok}
	if err != nil {
		e["error"] = err.Error()
	}
	emit(e)
	select {
	case err := <-closed:
		emit(map[string]interface{}{"event": "disconnected", "error": fmt.Sprint(err)})
	case <-stop:
	}
}
