module laconichelm.local/kindnet-standin

go 1.22
