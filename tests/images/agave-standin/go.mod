module laconichelm.local/agave-standin

go 1.22
