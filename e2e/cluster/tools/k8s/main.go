// Command k8s is a multi-call binary (like the old hyperkube) holding the
// Kubernetes components the local e2e cluster runs. It dispatches on the name
// it was started as (symlinks kube-apiserver, kubelet, ... point at it), or on
// its first argument: `k8s kubelet --config ...`. `k8s cri-reset ENDPOINT`
// removes every pod of a CRI runtime (see cri.go; used by down.sh).
//
// Each branch calls the same cobra command constructor the upstream
// k8s.io/kubernetes/cmd/<name>/main.go calls, with the same blank imports.
// Linking one binary instead of six saves most of the cold build time on
// small machines, since linking a Kubernetes component is the expensive step.
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/spf13/cobra"

	"k8s.io/component-base/cli"
	"k8s.io/kubectl/pkg/cmd"
	"k8s.io/kubectl/pkg/cmd/util"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	proxy "k8s.io/kubernetes/cmd/kube-proxy/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"

	_ "time/tzdata" // CronJob time zones (kube-apiserver, kube-controller-manager)

	_ "k8s.io/client-go/plugin/pkg/client/auth"           // kubectl auth plugins
	_ "k8s.io/component-base/logs/json/register"          // JSON log format
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go metrics
	_ "k8s.io/component-base/metrics/prometheus/version"  // version metric
)

var commands = map[string]func() *cobra.Command{
	"kube-apiserver":          apiserver.NewAPIServerCommand,
	"kube-controller-manager": controllermanager.NewControllerManagerCommand,
	"kube-scheduler":          func() *cobra.Command { return scheduler.NewSchedulerCommand() },
	"kubelet":                 kubelet.NewKubeletCommand,
	"kube-proxy":              proxy.NewProxyCommand,
}

func names() string {
	all := []string{"kubectl"}
	for n := range commands {
		all = append(all, n)
	}
	sort.Strings(all)
	return strings.Join(all, ", ")
}

func main() {
	name := filepath.Base(os.Args[0])
	if len(os.Args) > 1 && os.Args[1] == "cri-reset" && name == "k8s" {
		os.Exit(criReset(os.Args[2:]))
	}
	if _, ok := commands[name]; !ok && name != "kubectl" {
		if len(os.Args) < 2 {
			fmt.Fprintf(os.Stderr, "usage: %s COMMAND [ARGS...] (or run it through a symlink named COMMAND)\ncommands: %s\n", name, names())
			os.Exit(2)
		}
		name = os.Args[1]
		os.Args = os.Args[1:]
	}
	if name == "kubectl" {
		command := cmd.NewDefaultKubectlCommand()
		if err := cli.RunNoErrOutput(command); err != nil {
			util.CheckErr(err)
		}
		return
	}
	newCommand, ok := commands[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "unknown command %q; commands: %s\n", name, names())
		os.Exit(2)
	}
	os.Exit(cli.Run(newCommand()))
}
