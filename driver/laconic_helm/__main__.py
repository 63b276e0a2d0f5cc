from laconic_helm.cli import main

main()
