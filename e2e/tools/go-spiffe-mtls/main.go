// go-spiffe-mtls is a test workload built on go-spiffe, the SPIFFE
// project's Go library, so that Signet's end-to-end tests can show a Go
// workload completing mTLS with SVIDs from Signet or SPIRE, unchanged.
// It is test tooling, not part of Signet (the product is Rust only); it
// is built by e2e/tools/install-interop.sh.
//
//	go-spiffe-mtls server -socket unix:///path -listen 127.0.0.1:0 -allow spiffe://td/id
//	    prints "listening HOST:PORT", then answers each connection's line
//	    with "hello <client ID>, this is <own ID>".
//	go-spiffe-mtls client -socket unix:///path -connect HOST:PORT -server-id spiffe://td/id
//	    one connection; prints the server's greeting.
//	go-spiffe-mtls client ... -until-issuers N -timeout D -every D
//	    a new connection every D until the server's or this client's
//	    SVIDs have been signed by N different CAs (or the timeout), then
//	    prints a JSON summary; exit 1 if any connection failed.
//	    -until-own-issuers N instead waits for this client's own SVIDs only;
//	    -save-first-svid FILE writes the first SVID it used (PEM chain).
//	go-spiffe-mtls fetch-load -socket unix:///path -clients N -duration D -kind x509|jwt [-audience A] [-expect ID] [-warmup D]
//	    N goroutines, each with its own workloadapi.Client, calling
//	    FetchX509SVID (or FetchJWTSVID for -audience) back to back: first
//	    for -warmup (not counted), then for -duration; prints a JSON
//	    summary {requests, errors, per_second, p50_us, p99_us, ...}. A
//	    response whose SPIFFE ID is not -expect counts as an error.
//	go-spiffe-mtls fetch -socket unix:///path -expect ID [-timeout D] [-retry D]
//	    FetchX509SVID until it returns -expect (retrying every -retry on
//	    errors, e.g. while the identity does not exist yet) or -timeout;
//	    prints "waiting" once the first attempt failed (or is still
//	    pending after a second), then a JSON line {id, attempts}.
package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"flag"
	"fmt"
	"net"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

func main() {
	if len(os.Args) < 2 {
		fail("usage: go-spiffe-mtls server|client|fetch-load|fetch [flags]")
	}
	switch os.Args[1] {
	case "server":
		server(os.Args[2:])
	case "client":
		client(os.Args[2:])
	case "fetch-load":
		fetchLoad(os.Args[2:])
	case "fetch":
		fetchUntil(os.Args[2:])
	default:
		fail("unknown command " + os.Args[1])
	}
}

func fail(msg string) {
	fmt.Fprintln(os.Stderr, msg)
	os.Exit(2)
}

func source(ctx context.Context, socket string) *workloadapi.X509Source {
	src, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr(socket)))
	if err != nil {
		fail("X509 source: " + err.Error())
	}
	return src
}

func authorizer(ids string) tlsconfig.Authorizer {
	var allowed []spiffeid.ID
	for _, raw := range strings.Split(ids, ",") {
		id, err := spiffeid.FromString(raw)
		if err != nil {
			fail("bad SPIFFE ID " + raw + ": " + err.Error())
		}
		allowed = append(allowed, id)
	}
	return tlsconfig.AuthorizeOneOf(allowed...)
}

func server(args []string) {
	flags := flag.NewFlagSet("server", flag.ExitOnError)
	socket := flags.String("socket", os.Getenv("SPIFFE_ENDPOINT_SOCKET"), "Workload API address")
	listen := flags.String("listen", "127.0.0.1:0", "address to listen on")
	allow := flags.String("allow", "", "client SPIFFE IDs allowed, comma-separated")
	_ = flags.Parse(args)
	ctx := context.Background()
	src := source(ctx, *socket)
	listener, err := tls.Listen("tcp", *listen, tlsconfig.MTLSServerConfig(src, src, authorizer(*allow)))
	if err != nil {
		fail("listen: " + err.Error())
	}
	fmt.Printf("listening %s\n", listener.Addr())
	for {
		conn, err := listener.Accept()
		if err != nil {
			fail("accept: " + err.Error())
		}
		go answer(conn.(*tls.Conn), src)
	}
}

func answer(conn *tls.Conn, src *workloadapi.X509Source) {
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if err := conn.Handshake(); err != nil {
		fmt.Fprintf(os.Stderr, "handshake: %v\n", err)
		return
	}
	if _, err := bufio.NewReader(conn).ReadString('\n'); err != nil {
		return
	}
	peer := leafID(conn.ConnectionState().PeerCertificates)
	own, err := src.GetX509SVID()
	if err != nil {
		return
	}
	fmt.Fprintf(conn, "hello %s, this is %s\n", peer, own.ID)
}

func leafID(chain []*x509.Certificate) string {
	if len(chain) == 0 || len(chain[0].URIs) == 0 {
		return "?"
	}
	return chain[0].URIs[0].String()
}

type summary struct {
	Connections   int      `json:"connections"`
	Failed        int      `json:"failed"`
	Errors        []string `json:"errors"`
	ServerIssuers []string `json:"server_issuers"`
	ClientIssuers []string `json:"client_issuers"`
	Greeting      string   `json:"greeting"`
}

func client(args []string) {
	flags := flag.NewFlagSet("client", flag.ExitOnError)
	socket := flags.String("socket", os.Getenv("SPIFFE_ENDPOINT_SOCKET"), "Workload API address")
	connect := flags.String("connect", "", "server address")
	serverID := flags.String("server-id", "", "server SPIFFE IDs accepted, comma-separated")
	untilIssuers := flags.Int("until-issuers", 0, "keep connecting until one side's SVIDs were signed by this many CAs")
	untilOwn := flags.Int("until-own-issuers", 0, "keep connecting until this client's SVIDs were signed by this many CAs")
	saveFirst := flags.String("save-first-svid", "", "write the first SVID used to this file (PEM chain)")
	timeout := flags.Duration("timeout", 5*time.Minute, "give up looping after this long")
	every := flags.Duration("every", 100*time.Millisecond, "pause between connections when looping")
	_ = flags.Parse(args)
	ctx := context.Background()
	src := source(ctx, *socket)
	config := tlsconfig.MTLSClientConfig(src, src, authorizer(*serverID))
	if *saveFirst != "" {
		svid, err := src.GetX509SVID()
		if err != nil {
			fail("SVID: " + err.Error())
		}
		var chain []byte
		for _, cert := range svid.Certificates {
			chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})...)
		}
		if err := os.WriteFile(*saveFirst, chain, 0o644); err != nil {
			fail("writing " + *saveFirst + ": " + err.Error())
		}
	}

	if *untilIssuers == 0 && *untilOwn == 0 {
		greeting, _, err := exchange(*connect, config)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Print(greeting)
		return
	}

	result := summary{Errors: []string{}}
	serverIssuers, clientIssuers := map[string]bool{}, map[string]bool{}
	deadline := time.Now().Add(*timeout)
	done := func() bool {
		if *untilOwn > 0 {
			return len(clientIssuers) >= *untilOwn
		}
		return len(serverIssuers) >= *untilIssuers || len(clientIssuers) >= *untilIssuers
	}
	for time.Now().Before(deadline) && !done() {
		result.Connections++
		greeting, state, err := exchange(*connect, config)
		if err != nil {
			result.Failed++
			if len(result.Errors) < 10 {
				result.Errors = append(result.Errors, err.Error())
			}
		} else {
			result.Greeting = strings.TrimSpace(greeting)
			serverIssuers[issuer(state.PeerCertificates)] = true
			if own, err := src.GetX509SVID(); err == nil {
				clientIssuers[issuer(own.Certificates)] = true
			}
		}
		time.Sleep(*every)
	}
	for k := range serverIssuers {
		result.ServerIssuers = append(result.ServerIssuers, k)
	}
	for k := range clientIssuers {
		result.ClientIssuers = append(result.ClientIssuers, k)
	}
	out, _ := json.Marshal(result)
	fmt.Println(string(out))
	if result.Failed > 0 {
		os.Exit(1)
	}
}

// issuer names the CA that signed a chain's leaf by its authority key ID.
func issuer(chain []*x509.Certificate) string {
	if len(chain) == 0 {
		return "?"
	}
	return hex.EncodeToString(chain[0].AuthorityKeyId)
}

func exchange(addr string, config *tls.Config) (string, tls.ConnectionState, error) {
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	conn, err := tls.DialWithDialer(dialer, "tcp", addr, config)
	if err != nil {
		return "", tls.ConnectionState{}, fmt.Errorf("dial %s: %w", addr, err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintln(conn, "hello"); err != nil {
		return "", tls.ConnectionState{}, fmt.Errorf("write: %w", err)
	}
	greeting, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return "", tls.ConnectionState{}, fmt.Errorf("read greeting: %w", err)
	}
	return greeting, conn.ConnectionState(), nil
}

type loadSummary struct {
	Kind           string   `json:"kind"`
	Clients        int      `json:"clients"`
	Seconds        float64  `json:"seconds"`
	Requests       int      `json:"requests"`
	Errors         int      `json:"errors"`
	WarmupRequests int      `json:"warmup_requests"`
	WarmupErrors   int      `json:"warmup_errors"`
	PerSecond      float64  `json:"per_second"`
	P50us          int64    `json:"p50_us"`
	P99us          int64    `json:"p99_us"`
	MaxUs          int64    `json:"max_us"`
	IDs            []string `json:"ids"`
	FirstError     string   `json:"first_error,omitempty"`
}

// loadWorker is one client's share of a fetch-load run.
type loadWorker struct {
	latencies                                []time.Duration
	requests, errors, warmupReqs, warmupErrs int
	ids                                      map[string]bool
	firstError                               string
}

// fetchOnce makes one Workload API call of the given kind and returns the
// SPIFFE ID it was answered with.
func fetchOnce(ctx context.Context, client *workloadapi.Client, kind, audience string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if kind == "jwt" {
		svid, err := client.FetchJWTSVID(ctx, jwtsvid.Params{Audience: audience})
		if err != nil {
			return "", err
		}
		return svid.ID.String(), nil
	}
	svid, err := client.FetchX509SVID(ctx)
	if err != nil {
		return "", err
	}
	return svid.ID.String(), nil
}

func fetchLoad(args []string) {
	flags := flag.NewFlagSet("fetch-load", flag.ExitOnError)
	socket := flags.String("socket", os.Getenv("SPIFFE_ENDPOINT_SOCKET"), "Workload API address")
	clients := flags.Int("clients", 1, "concurrent clients, each with its own connection")
	duration := flags.Duration("duration", 10*time.Second, "how long to measure")
	warmup := flags.Duration("warmup", 2*time.Second, "how long to call before measuring")
	kind := flags.String("kind", "x509", "x509 (FetchX509SVID) or jwt (FetchJWTSVID)")
	audience := flags.String("audience", "bench", "JWT-SVID audience (-kind jwt)")
	expect := flags.String("expect", "", "SPIFFE ID every response must carry (any when empty)")
	_ = flags.Parse(args)
	if *kind != "x509" && *kind != "jwt" {
		fail("-kind must be x509 or jwt")
	}
	if *clients < 1 {
		fail("-clients must be at least 1")
	}
	ctx := context.Background()
	workers := make([]*loadWorker, *clients)
	conns := make([]*workloadapi.Client, *clients)
	for i := range conns {
		c, err := workloadapi.New(ctx, workloadapi.WithAddr(*socket))
		if err != nil {
			fail("Workload API client: " + err.Error())
		}
		conns[i] = c
		workers[i] = &loadWorker{ids: map[string]bool{}}
	}
	start := time.Now().Add(*warmup)
	end := start.Add(*duration)
	var wg sync.WaitGroup
	for i := range workers {
		wg.Add(1)
		go func(w *loadWorker, c *workloadapi.Client) {
			defer wg.Done()
			for {
				began := time.Now()
				if !began.Before(end) {
					return
				}
				measured := !began.Before(start)
				id, err := fetchOnce(ctx, c, *kind, *audience)
				took := time.Since(began)
				if err == nil && *expect != "" && id != *expect {
					err = fmt.Errorf("got %s, expected %s", id, *expect)
				}
				if !measured {
					w.warmupReqs++
					if err != nil {
						w.warmupErrs++
					}
					continue
				}
				w.requests++
				if err != nil {
					w.errors++
					if w.firstError == "" {
						w.firstError = err.Error()
					}
					continue
				}
				w.ids[id] = true
				w.latencies = append(w.latencies, took)
			}
		}(workers[i], conns[i])
	}
	wg.Wait()
	for _, c := range conns {
		_ = c.Close()
	}

	result := loadSummary{Kind: *kind, Clients: *clients, Seconds: duration.Seconds(), IDs: []string{}}
	var latencies []time.Duration
	ids := map[string]bool{}
	for _, w := range workers {
		result.Requests += w.requests
		result.Errors += w.errors
		result.WarmupRequests += w.warmupReqs
		result.WarmupErrors += w.warmupErrs
		if result.FirstError == "" {
			result.FirstError = w.firstError
		}
		latencies = append(latencies, w.latencies...)
		for id := range w.ids {
			ids[id] = true
		}
	}
	for id := range ids {
		result.IDs = append(result.IDs, id)
	}
	sort.Strings(result.IDs)
	sort.Slice(latencies, func(i, j int) bool { return latencies[i] < latencies[j] })
	if n := len(latencies); n > 0 {
		result.P50us = percentile(latencies, 0.50).Microseconds()
		result.P99us = percentile(latencies, 0.99).Microseconds()
		result.MaxUs = latencies[n-1].Microseconds()
	}
	result.PerSecond = float64(result.Requests-result.Errors) / duration.Seconds()
	out, _ := json.Marshal(result)
	fmt.Println(string(out))
	if result.Errors > 0 || result.Requests == 0 {
		os.Exit(1)
	}
}

// percentile of sorted latencies (nearest rank).
func percentile(sorted []time.Duration, p float64) time.Duration {
	i := int(float64(len(sorted)-1)*p + 0.5)
	if i >= len(sorted) {
		i = len(sorted) - 1
	}
	return sorted[i]
}

func fetchUntil(args []string) {
	flags := flag.NewFlagSet("fetch", flag.ExitOnError)
	socket := flags.String("socket", os.Getenv("SPIFFE_ENDPOINT_SOCKET"), "Workload API address")
	expect := flags.String("expect", "", "SPIFFE ID to wait for (any when empty)")
	timeout := flags.Duration("timeout", time.Minute, "give up after this long")
	retry := flags.Duration("retry", 20*time.Millisecond, "pause between failed attempts")
	_ = flags.Parse(args)
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	client, err := workloadapi.New(ctx, workloadapi.WithAddr(*socket))
	if err != nil {
		fail("Workload API client: " + err.Error())
	}
	defer client.Close()
	var announce sync.Once
	say := func() { announce.Do(func() { fmt.Println("waiting") }) }
	pending := time.AfterFunc(time.Second, say)
	defer pending.Stop()
	attempts := 0
	var last error
	for ctx.Err() == nil {
		attempts++
		svid, err := client.FetchX509SVID(ctx)
		switch {
		case err != nil:
			last = err
		case *expect != "" && svid.ID.String() != *expect:
			last = fmt.Errorf("got %s, expected %s", svid.ID, *expect)
		default:
			out, _ := json.Marshal(map[string]any{"id": svid.ID.String(), "attempts": attempts})
			fmt.Println(string(out))
			return
		}
		say()
		select {
		case <-ctx.Done():
		case <-time.After(*retry):
		}
	}
	fmt.Fprintf(os.Stderr, "no SVID after %s and %d attempts: %v\n", *timeout, attempts, last)
	os.Exit(1)
}
