"""Between the cluster and the solver: observed state -> solver problem; plan -> actions.

Everything here is pure: the operator passes observations in and applies what comes out.
"""
