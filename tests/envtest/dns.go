// The cluster-dns subcommand: the local cluster's DNS server (scripts/local-cluster.sh).
// It answers A queries for Service names, <service>.<namespace>.svc.<domain>, with the
// Service's cluster IP, read from the API server through an informer, and NXDOMAIN for
// every other name: nothing is forwarded, so no query ever leaves the machine.
//
// Why not CoreDNS: it cannot be pulled here, and building it from its module compiles its
// own client-go and a hundred more modules; this is the part of it that build pods use
// (the cache service's name), on packages this binary links anyway. Does I/O (UDP and
// TCP listeners, a watch on the API server).
package main

import (
	"encoding/binary"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"golang.org/x/net/dns/dnsmessage"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	listersv1 "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
)

const dnsTTL = 5 // seconds: a Service re-created with a new IP is seen soon

func runClusterDNS(args []string) int {
	flags := flag.NewFlagSet("cluster-dns", flag.ContinueOnError)
	kubeconfig := flags.String("kubeconfig", "", "kubeconfig of the API server (required)")
	listen := flags.String("listen", "", "address to serve on, UDP and TCP, e.g. 10.99.0.1:53 (required)")
	domain := flags.String("domain", "cluster.local", "the cluster's DNS domain")
	if err := flags.Parse(args); err != nil {
		return 2
	}
	if *kubeconfig == "" || *listen == "" {
		fmt.Fprintln(os.Stderr, "cluster-dns: --kubeconfig and --listen are required")
		return 2
	}
	config, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		fmt.Fprintf(os.Stderr, "cluster-dns: %v\n", err)
		return 1
	}
	client, err := kubernetes.NewForConfig(config)
	if err != nil {
		fmt.Fprintf(os.Stderr, "cluster-dns: %v\n", err)
		return 1
	}
	factory := informers.NewSharedInformerFactory(client, 10*time.Minute)
	services := factory.Core().V1().Services()
	lister := services.Lister()
	informer := services.Informer()
	stop := make(chan struct{})
	factory.Start(stop)
	if !cache.WaitForCacheSync(stop, informer.HasSynced) {
		fmt.Fprintln(os.Stderr, "cluster-dns: the Service cache did not sync")
		return 1
	}
	server := &dnsServer{services: lister, suffix: ".svc." + strings.Trim(*domain, ".") + "."}

	udp, err := net.ListenPacket("udp", *listen)
	if err != nil {
		fmt.Fprintf(os.Stderr, "cluster-dns: %v\n", err)
		return 1
	}
	tcp, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintf(os.Stderr, "cluster-dns: %v\n", err)
		return 1
	}
	fmt.Fprintf(os.Stderr, "cluster-dns: serving *%s on %s\n", server.suffix, *listen)
	go server.serveTCP(tcp)
	server.serveUDP(udp)
	return 1
}

type dnsServer struct {
	services listersv1.ServiceLister
	suffix   string
}

func (s *dnsServer) serveUDP(conn net.PacketConn) {
	buf := make([]byte, 4096)
	for {
		n, addr, err := conn.ReadFrom(buf)
		if err != nil {
			fmt.Fprintf(os.Stderr, "cluster-dns: udp: %v\n", err)
			return
		}
		if reply := s.answer(buf[:n]); reply != nil {
			_, _ = conn.WriteTo(reply, addr)
		}
	}
}

func (s *dnsServer) serveTCP(listener net.Listener) {
	for {
		conn, err := listener.Accept()
		if err != nil {
			fmt.Fprintf(os.Stderr, "cluster-dns: tcp: %v\n", err)
			return
		}
		go func() {
			defer conn.Close()
			_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
			for {
				var size [2]byte
				if _, err := io.ReadFull(conn, size[:]); err != nil {
					return
				}
				query := make([]byte, binary.BigEndian.Uint16(size[:]))
				if _, err := io.ReadFull(conn, query); err != nil {
					return
				}
				reply := s.answer(query)
				if reply == nil {
					return
				}
				out := binary.BigEndian.AppendUint16(nil, uint16(len(reply)))
				if _, err := conn.Write(append(out, reply...)); err != nil {
					return
				}
			}
		}()
	}
}

// answer builds the reply to one query message; nil when it cannot be parsed.
func (s *dnsServer) answer(query []byte) []byte {
	var parser dnsmessage.Parser
	header, err := parser.Start(query)
	if err != nil {
		return nil
	}
	question, err := parser.Question()
	if err != nil {
		return nil
	}
	reply := dnsmessage.Message{
		Header: dnsmessage.Header{
			ID: header.ID, Response: true, Authoritative: true,
			RecursionDesired: header.RecursionDesired, RCode: dnsmessage.RCodeNameError,
		},
		Questions: []dnsmessage.Question{question},
	}
	if ip := s.lookup(strings.ToLower(question.Name.String())); ip != nil {
		reply.Header.RCode = dnsmessage.RCodeSuccess
		if question.Type == dnsmessage.TypeA && question.Class == dnsmessage.ClassINET {
			var a dnsmessage.AResource
			copy(a.A[:], ip)
			reply.Answers = []dnsmessage.Resource{{
				Header: dnsmessage.ResourceHeader{
					Name: question.Name, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET, TTL: dnsTTL,
				},
				Body: &a,
			}}
		}
	}
	out, err := reply.Pack()
	if err != nil {
		return nil
	}
	return out
}

// lookup returns the cluster IP (IPv4) of <service>.<namespace>.svc.<domain>., or nil.
func (s *dnsServer) lookup(name string) net.IP {
	prefix, ok := strings.CutSuffix(name, s.suffix)
	if !ok {
		return nil
	}
	service, namespace, ok := strings.Cut(prefix, ".")
	if !ok || strings.Contains(namespace, ".") {
		return nil
	}
	svc, err := s.services.Services(namespace).Get(service)
	if err != nil || svc.Spec.ClusterIP == "" || svc.Spec.ClusterIP == corev1.ClusterIPNone {
		return nil
	}
	return net.ParseIP(svc.Spec.ClusterIP).To4()
}
