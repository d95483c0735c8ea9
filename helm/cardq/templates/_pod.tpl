{{/*
The pod template shared by the Deployment and the StatefulSet (indented for spec.template).
*/}}
{{- define "cardq.podTemplate" }}
  template:
    metadata:
      annotations:
        # A change of the rendered configuration rolls the pods.
        checksum/config: {{ include (print $.Template.BasePath "/configmap.yaml") . | sha256sum }}
        {{- with .Values.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      labels:
        {{- include "cardq.labels" . | nindent 8 }}
        {{- with .Values.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ include "cardq.serviceAccountName" . }}
      automountServiceAccountToken: {{ .Values.serviceAccount.automountServiceAccountToken }}
      {{- with .Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .Values.priorityClassName }}
      priorityClassName: {{ . }}
      {{- end }}
      # Longer than config.delivery.drain_grace_s ({{ include "cardq.drainGrace" . }} s):
      # SIGTERM -> drain in-flight sends -> commit -> leave the group -> exit 0.
      terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
      securityContext:
        {{- toYaml .Values.podSecurityContext | nindent 8 }}
      {{- if .Values.configCheck.enabled }}
      initContainers:
        # `cardq run --check` with the worker's own configuration, environment and mounts:
        # a key the worker refuses or a credential it cannot read stops the pod here, with
        # the key and the reason in `kubectl logs <pod> -c config-check`.
        - name: config-check
          image: {{ include "cardq.image" . | quote }}
          imagePullPolicy: {{ .Values.image.pullPolicy }}
          args:
            - run
            - --check
            - --config
            - /etc/cardq/config.yaml
          {{- include "cardq.runtime" . | nindent 10 }}
          resources:
            {{- toYaml .Values.configCheck.resources | nindent 12 }}
          securityContext:
            {{- toYaml .Values.securityContext | nindent 12 }}
      {{- end }}
      containers:
        - name: cardq
          image: {{ include "cardq.image" . | quote }}
          imagePullPolicy: {{ .Values.image.pullPolicy }}
          args:
            - run
            - --config
            - /etc/cardq/config.yaml
          ports:
            - name: metrics
              containerPort: {{ .Values.service.port }}
              protocol: TCP
          {{- include "cardq.runtime" . | nindent 10 }}
          startupProbe:
            httpGet:
              path: /healthz
              port: metrics
            {{- toYaml .Values.probes.startup | nindent 12 }}
          livenessProbe:
            httpGet:
              path: /healthz
              port: metrics
            {{- toYaml .Values.probes.liveness | nindent 12 }}
          readinessProbe:
            httpGet:
              path: /readyz
              port: metrics
            {{- toYaml .Values.probes.readiness | nindent 12 }}
          resources:
            {{- toYaml .Values.resources | nindent 12 }}
          securityContext:
            {{- toYaml .Values.securityContext | nindent 12 }}
      volumes:
        - name: config
          configMap:
            name: {{ include "cardq.fullname" . }}
        - name: tmp
          emptyDir:
            {{- with .Values.tmpVolume.medium }}
            medium: {{ . }}
            {{- end }}
            {{- with .Values.tmpVolume.sizeLimit }}
            sizeLimit: {{ . }}
            {{- end }}
        {{- if .Values.secretFiles.enabled }}
        - name: secrets
          secret:
            secretName: {{ .Values.existingSecret }}
            defaultMode: {{ .Values.secretFiles.defaultMode }}
            {{- with .Values.secretFiles.items }}
            items:
              {{- toYaml . | nindent 14 }}
            {{- end }}
        {{- end }}
        {{- with .Values.extraVolumes }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- with .Values.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .Values.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .Values.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .Values.topologySpreadConstraints }}
      {{- $constraints := list }}
      {{- range . }}
      {{- $c := deepCopy . }}
      {{- if not $c.labelSelector }}
      {{- $_ := set $c "labelSelector" (dict "matchLabels" (include "cardq.selectorLabels" $ | fromYaml)) }}
      {{- end }}
      {{- $constraints = append $constraints $c }}
      {{- end }}
      topologySpreadConstraints:
        {{- toYaml $constraints | nindent 8 }}
      {{- end }}
{{- end }}
