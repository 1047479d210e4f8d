module github.com/cni-userstack/cni-userstack

go 1.26.8
