// Command kiln-envtest is the Kubernetes control plane of Kiln's real-API-server tests:
// kube-apiserver, kube-controller-manager and an embedded etcd in one binary, dispatched
// by subcommand (hyperkube-style), so that the packages they share compile and link once.
// It also holds the node components of the local cluster (scripts/local-cluster.sh):
// kube-scheduler, kubelet and kube-proxy, which share most of those packages too. It
// writes the certificates and kubeconfigs the tests need. Test infrastructure only; it
// does I/O (network servers, files) and is never part of the product.
//
//	kiln-envtest etcd --data-dir DIR --listen-client-url URL --listen-peer-url URL [--ready-file FILE]
//	kiln-envtest kube-apiserver [kube-apiserver flags]
//	kiln-envtest kube-controller-manager [kube-controller-manager flags]
//	kiln-envtest kube-scheduler [kube-scheduler flags]
//	kiln-envtest kubelet [kubelet flags]
//	kiln-envtest kube-proxy [kube-proxy flags]
//	kiln-envtest cluster-dns --kubeconfig FILE --listen ADDR [--domain DOMAIN]
//	kiln-envtest pki --dir DIR --server URL
//	kiln-envtest version
package main

import (
	"context"
	"fmt"
	"os"
	"runtime/debug"
	"strings"
	_ "time/tzdata" // as in the upstream mains: CronJob time zones

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"          // as in the upstream mains
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // as in the upstream mains
	_ "k8s.io/component-base/metrics/prometheus/version"  // as in the upstream mains
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	proxy "k8s.io/kubernetes/cmd/kube-proxy/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"
)

const usage = `usage: kiln-envtest <command> [flags]

commands:
  etcd                      an embedded etcd server (go.etcd.io/etcd/server/v3/embed)
  kube-apiserver            k8s.io/kubernetes/cmd/kube-apiserver
  kube-controller-manager   k8s.io/kubernetes/cmd/kube-controller-manager
  kube-scheduler            k8s.io/kubernetes/cmd/kube-scheduler
  kubelet                   k8s.io/kubernetes/cmd/kubelet
  kube-proxy                k8s.io/kubernetes/cmd/kube-proxy
  cluster-dns               DNS for Service names, from the API server (dns.go)
  pki                       write a CA, serving and client certificates, service-account keys, kubeconfigs
  version                   print the versions of the modules this binary was built from

Every server command exits when the process that started it goes away (see watchdog.go).
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	command, args := os.Args[1], os.Args[2:]
	switch command {
	case "etcd":
		watchParent()
		os.Exit(runEtcd(args))
	case "kube-apiserver":
		watchParent()
		cmd := apiserver.NewAPIServerCommand()
		cmd.SetArgs(args)
		os.Exit(cli.Run(cmd))
	case "kube-controller-manager":
		watchParent()
		cmd := controllermanager.NewControllerManagerCommand()
		cmd.SetArgs(args)
		os.Exit(cli.Run(cmd))
	case "kube-scheduler":
		watchParent()
		cmd := scheduler.NewSchedulerCommand()
		cmd.SetArgs(args)
		os.Exit(cli.Run(cmd))
	case "kubelet":
		watchParent()
		cmd := kubelet.NewKubeletCommand(context.Background())
		cmd.SetArgs(args)
		os.Exit(cli.Run(cmd))
	case "kube-proxy":
		watchParent()
		cmd := proxy.NewProxyCommand()
		cmd.SetArgs(args)
		os.Exit(cli.Run(cmd))
	case "cluster-dns":
		watchParent()
		os.Exit(runClusterDNS(args))
	case "pki":
		os.Exit(runPKI(args))
	case "version":
		printVersions()
	case "-h", "--help", "help":
		fmt.Print(usage)
	default:
		fmt.Fprintf(os.Stderr, "kiln-envtest: unknown command %q\n\n%s", command, usage)
		os.Exit(2)
	}
}

// printVersions prints the modules that make up the control plane, so that a log shows
// exactly what a test ran against.
func printVersions() {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		fmt.Println("kiln-envtest: no build information")
		return
	}
	fmt.Printf("go %s\n", info.GoVersion)
	for _, dep := range info.Deps {
		if dep.Path == "k8s.io/kubernetes" || strings.HasPrefix(dep.Path, "go.etcd.io/etcd/server") {
			version := dep.Version
			if dep.Replace != nil {
				version = dep.Replace.Version
			}
			fmt.Printf("%s %s\n", dep.Path, version)
		}
	}
}
